"""A rank knows its Slurm job's end time only from the batch step's `slurm_start` event of that job."""

import pytest

from orchestrator.shared.checkpoint.policy import job_deadline
from orchestrator.rundir.rows import parse_event


def test_deadline_comes_from_this_jobs_start(monkeypatch):
    history = [parse_event(row) for row in (
        {"event": "slurm_start", "job_id": 7, "end_time": 100.0},
        {"event": "slurm_start", "job_id": 8, "end_time": 200.0},
        {"event": "start"},
    )]
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert job_deadline(history) == 100.0
    monkeypatch.setenv("SLURM_JOB_ID", "9")
    assert job_deadline(history) is None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert job_deadline(history) is None


def test_an_auto_interval_starts_from_the_stall_an_earlier_attempt_measured():
    """Attempts that each die within the first auto interval would otherwise never checkpoint."""
    from orchestrator.shared.checkpoint.policy import FIRST_AUTO_INTERVAL_S, SavePolicy, last_stall
    from orchestrator.checkpoint.spec import CheckpointSpec

    spec = CheckpointSpec(interval_steps="auto", mtbf_hours=0.01)  # 36 s between failures
    saves = [{"event": "checkpoint", "step": step, "stall_s": stall_s, "bytes": 1, "write_s": 0.1} for step, stall_s in ((5, 0.5), (10, 0.08))]
    history = [parse_event(row) for row in ({"event": "start"}, *saves)]
    assert last_stall(history) == 0.08
    assert SavePolicy(spec, 100, None).auto_interval_s == FIRST_AUTO_INTERVAL_S
    resumed = SavePolicy(spec, 100, None, last_stall(history))
    assert resumed.auto_interval_s == pytest.approx(2.4)  # sqrt(2 x 0.08 s x 36 s), not a first minute without a save
