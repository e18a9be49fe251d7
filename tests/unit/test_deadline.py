"""A rank knows its Slurm job's end time only from the batch step's `slurm_start` event of that job."""

from orchestrator.checkpoint.policy import job_deadline


def test_deadline_comes_from_this_jobs_start(monkeypatch):
    history = [
        {"event": "slurm_start", "job_id": 7, "end_time": 100.0},
        {"event": "slurm_start", "job_id": 8, "end_time": 200.0},
        {"event": "start"},
    ]
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert job_deadline(history) == 100.0
    monkeypatch.setenv("SLURM_JOB_ID", "9")
    assert job_deadline(history) is None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert job_deadline(history) is None
