"""In-job restarts (issue 31) with real processes: a rank SIGKILLed, raising mid-step or hung (found by
the node launcher's watchdog) is restarted by its node launcher within the same `orch run`, which then
finishes bit-exact with an uninterrupted run; with its restarts used up, `orch run` ends with one line
naming the failure, and the committed checkpoints are untouched."""

import os
import re
import signal
from pathlib import Path

import pytest

from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.recovery_events import AttemptFailed, Hang
from orchestrator.rundir.rows import Resumed
from orchestrator.shared.checkpoint import store
from tests.helpers.cluster import left_running, naming
from tests.helpers.processes import kill_run, losses, orch, start_orch, wait_for_rows
from tests.helpers.project import FAST, SHORT_RUN, TINY

pytestmark = pytest.mark.distributed


def failures(run_dir: Path) -> list[AttemptFailed]:
    return [e for e in RunDir(run_dir).history() if isinstance(e, AttemptFailed)]


def run(run_dir: Path, *overrides: str):
    return orch("run", str(TINY), *SHORT_RUN, *overrides, "--run-dir", str(run_dir))


def rank_pids(run_dir: Path) -> dict[int, int]:
    """The pids the node launcher gave its newest ranks, from its log (forked ranks share its command line)."""
    started = [line for line in (run_dir / "logs" / "launcher.log").read_text().splitlines() if "started rank" in line][-1]
    return {int(rank): int(pid) for rank, pid in re.findall(r"rank (\d+) \(pid (\d+)\)", started)}


def test_a_sigkilled_rank_is_restarted_in_the_same_run_bit_exact(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start_orch("run", str(TINY), *SHORT_RUN, "--run-dir", str(run_dir))
    try:
        wait_for_rows(process, run_dir, 6)
        os.kill(rank_pids(run_dir)[1], signal.SIGKILL)  # as the OOM killer or a device fault would
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            kill_run(run_dir)
    assert process.returncode == 0, out + err
    assert losses(run_dir) == losses(uninterrupted())  # every step's loss, to the last bit
    (failed,) = failures(run_dir)
    assert (failed.failure, failed.ranks, failed.restarting, failed.restarts, failed.detail) == ("crash", [1], True, 1, "rank 1 killed by SIGKILL")
    assert "attempt 1 failed: crash (rank 1 killed by SIGKILL" in err
    assert any(isinstance(e, Resumed) for e in RunDir(run_dir).history())
    spent = read_summary(RunDir(run_dir)).ledger  # the goodput ledger: the fault's cost, by cause, adding up to the wall time
    assert spent.badput.restart_s > 0 and spent.badput.recomputed_s > 0 and spent.badput.startup_s > 0 and spent.productive_s > 0
    assert spent.productive_s + sum(spent.by_cause().values()) == pytest.approx(spent.wall_s)


def test_a_raising_rank_then_a_stopped_one_then_one_stopped_in_a_save_are_each_found_and_restarted_bit_exact(
        tmp_path, uninterrupted, monkeypatch):
    """Three faults, each firing once, in one run: rank 1 raises in step 3 (before any checkpoint: the
    ranks start over), then stops (SIGSTOP, as a stuck collective or a wedged device leaves it) in step
    6 and again in the checkpoint save of step 8. The watchdog ends each hung attempt after its 5 s
    timeout with every rank's stacks written and the stopped one named (without it the run would wait
    for the process group's timeout, every device idle), the launcher restarts the attempt, and the
    run ends bit-exact with its restarts (3) used up exactly, no process left behind."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "raise@3:rank1,stop@6:rank1,stop@8:save:rank1")
    result = run(run_dir, "fault_tolerance.timeouts.setup_s=300", "fault_tolerance.timeouts.step_s=5",
                 "fault_tolerance.timeouts.checkpoint_s=5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert losses(run_dir) == losses(uninterrupted())

    crashed, hung, hung_saving = failures(run_dir)
    assert [(f.failure, f.ranks, f.restarting, f.restarts) for f in (crashed, hung, hung_saving)] == [
        ("crash", [1], True, 1), ("hang", [1], True, 2), ("hang", [1], True, 3)]
    assert crashed.evidence == "logs/rank-1.log" and "injected fault" in (run_dir / crashed.evidence).read_text()
    assert (hung.evidence, hung_saving.evidence) == ("hangs/2", "hangs/3")

    in_step, in_save = [e for e in RunDir(run_dir).history() if isinstance(e, Hang)]
    assert (in_step.node, in_step.attempt, in_step.phase, in_step.step, in_step.timeout_s) == (0, 2, "step", 6, 5)
    assert (in_save.attempt, in_save.phase, in_save.step) == (3, "checkpoint", 8)
    assert in_step.stopped_ranks == in_save.stopped_ranks == [1] and in_step.stacks == "hangs/2"
    stacks = {rank: (run_dir / "hangs" / "2" / f"rank-{rank}.txt").read_text() for rank in (0, 1)}
    assert "rank 1: in step 6 for" in stacks[1] and "stopped (state T)" in stacks[1]
    assert all("loop.py" in text for text in stacks.values()), stacks  # each rank's Python stack, in the training loop
    assert "hang: rank(s) 1 stopped reporting in step 6 (timeout 5 s); stacks in hangs/2" in result.stdout + result.stderr
    assert "killing rank(s) 0, 1: they hung" in (run_dir / "logs" / "launcher.log").read_text()
    assert read_summary(RunDir(run_dir)).ledger.badput.hang_s == 10  # the step's and the save's timeouts, waited for
    assert not left_running(naming(str(run_dir)))  # the CLI, the launcher and every rank it forked have ended


def test_restarts_used_up_end_the_run_with_one_line_and_its_checkpoints_intact(tmp_path, monkeypatch):
    """The fault comes back at every attempt (step 4, after the checkpoint of step 2): one restart, then none.
    Saves are synchronous here so that the checkpoint has committed before step 3's collectives, which
    rank 1 passes before it raises."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "raise@4:rank1:always")
    result = orch("run", str(TINY), *FAST, "train.steps=12", "checkpoint.interval_steps=2", "checkpoint.async_save=false",
                  "fault_tolerance.max_restarts=1", "--run-dir", str(run_dir))
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout + result.stderr
    assert errors[0].startswith("error: training failed: crash in attempt 2 (rank 1 exited 1)")
    assert "no restart left (1 of fault_tolerance.max_restarts=1 used" in errors[0]
    assert f"see {run_dir}/logs/rank-1.log" in errors[0] and "step-00000002, is untouched" in errors[0]
    assert [(e.attempt, e.restarting, e.restarts) for e in failures(run_dir)] == [(1, True, 1), (2, False, 1)]
    checkpoints = store.committed(run_dir / "checkpoints")
    assert [c.name for c in checkpoints] == ["step-00000002"] and store.verify(checkpoints[0]).ok
    status = orch("status", str(run_dir))
    assert "FAILED" in status.stdout and "failures 2 crash (1 restarted in the job)" in status.stdout
