"""What `orch run` prints as it goes and at the end, where its output is a log (not a terminal)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.rundir.checkpoint_records import RunSummary
from orchestrator.watching.progress import ProgressView, describe_event

SUMMARY = {"status": "completed", "steps": 85, "first_loss": 7.6, "final_loss": 5.1, "final_val_loss": None, "tokens_per_s": 2100.0, "mfu": 0.21,
           "checkpoint": "runs/x/checkpoints/step-00000085", "energy": None}


def test_the_done_line_gives_this_attempts_time_apart_from_the_time_since_the_first_start():
    resumed = ProgressView.describe_summary(RunSummary(**{**SUMMARY, "wall_s": 882.4, "attempt_wall_s": 61.7, "restarts": 1}), Path("runs/x"))
    assert ", 62s this attempt (882s since the first of 2 attempts)\n" in resumed
    single = ProgressView.describe_summary(RunSummary(**{**SUMMARY, "wall_s": 49.2, "attempt_wall_s": 49.2, "restarts": 0}), Path("runs/x"))
    assert ", 49s\n" in single and "attempt" not in single
    earlier_version = ProgressView.describe_summary(RunSummary(**{**SUMMARY, "wall_s": 882.4, "restarts": 1}), Path("runs/x"))
    assert ", 882s\n" in earlier_version


def test_event_lines_stay_whole_in_a_log(capsys):
    """Off a terminal rich wrapped at 80 columns, so the start-up memory line came out as two lines."""
    memory = {"event": "engine_built", "rss_before_bytes": [2**30, 2**30], "peak_rss_bytes": [2**30 + 5 * 2**28, 2**31]}
    assert len(describe_event(memory)) <= 80
    long_reason = {"event": "checkpoint_set_aside", "path": "/a/long/run/directory/checkpoints/set-aside/step-00000012-1765100000000",
                   "reason": "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its content hash"}
    with ProgressView(10, interactive=False) as view:
        view.update([], [memory, long_reason])
    lines = capsys.readouterr().err.splitlines()
    assert lines == [describe_event(memory), describe_event(long_reason)]
    assert "1.25 GiB of memory per rank" in lines[0]  # the larger of the two ranks' growth
