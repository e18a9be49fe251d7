"""A rank that stops mid-training (SIGSTOP: what a stuck collective, a dead link or a wedged device
leaves) is found by its node launcher's watchdog within the step's timeout: every rank's stacks are
written with the stopped one named, a `hang` event is recorded and the attempt is ended, leaving no
process behind. Without the watchdog the run waits for the process group's timeout (10 min for
DeepSpeed's gloo), every device of the job idle."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.rows import Hang
from tests.helpers.cluster import left_running, naming
from tests.helpers.processes import kill_run, start_orch
from tests.helpers.project import FAST

pytestmark = pytest.mark.distributed

STOPPED_AT = 6
OVERRIDES = [
    *FAST, "train.steps=40", "checkpoint.interval_steps=1000",
    # Set-up generous for a loaded 2-core machine; a step of the tiny model takes well under a second.
    "fault_tolerance.timeouts.setup_s=300", "fault_tolerance.timeouts.step_s=5",
    # The attempt's end is what this test looks at: no in-job restart after it.
    "fault_tolerance.max_restarts=0",
]
DETECTION_BOUND_S = 420
"""Start-up, six steps, the step's 5 s and the stacks, on a loaded machine; far below the process group's timeout."""


def test_a_stopped_rank_is_named_its_stacks_written_and_the_attempt_ended(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_INJECT_FAULTS", f"stop@{STOPPED_AT}:rank1")  # rank 1 SIGSTOPs itself in that step
    run_dir = tmp_path / "run"
    process = start_orch("run", "recipes/tiny-pretrain.yaml", *OVERRIDES, "--run-dir", str(run_dir))
    try:
        stdout, stderr = process.communicate(timeout=DETECTION_BOUND_S)
    except subprocess.TimeoutExpired:
        kill_run(run_dir)  # SIGKILL ends a stopped process too
        process.communicate()
        pytest.fail(f"the run still waited on its stopped rank {DETECTION_BOUND_S} s after it started")

    assert process.returncode != 0, stdout + stderr
    [hang] = [e for e in RunDir(run_dir).history() if isinstance(e, Hang)]
    assert (hang.node, hang.attempt, hang.phase, hang.step, hang.timeout_s) == (0, 1, "step", STOPPED_AT, 5)
    assert hang.stopped_ranks == [1] and hang.stacks == "hangs/1"
    stacks = {rank: (run_dir / "hangs" / "1" / f"rank-{rank}.txt").read_text() for rank in (0, 1)}
    assert f"rank 1: in step {STOPPED_AT} for" in stacks[1] and "stopped (state T)" in stacks[1]
    assert all("loop.py" in text for text in stacks.values()), stacks  # each rank's Python stack, in the training loop
    assert f"hang: rank(s) 1 stopped reporting in step {STOPPED_AT} (timeout 5 s); stacks in hangs/1" in stdout + stderr

    launcher = (run_dir / "logs" / "launcher.log").read_text()
    assert "killing rank(s) 0, 1: they hung" in launcher, launcher
    # The CLI, the launcher and its ranks (forked from it, they share its command line) have all ended.
    assert not left_running(naming(str(run_dir)))
