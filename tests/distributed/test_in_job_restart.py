"""In-job restarts (issue 31) with real processes: a rank SIGKILLed, or one raising mid-step, is
restarted by its node launcher within the same `orch run`, which then finishes bit-exact with an
uninterrupted run; with its restarts used up, `orch run` ends with one line naming the failure, and
the committed checkpoints are untouched."""

import json
import os
import re
import signal
from pathlib import Path

import pytest

from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.rows import AttemptFailed, Resumed
from orchestrator.shared.checkpoint import store
from tests.helpers.processes import kill_run, orch, start_orch, wait_for_rows
from tests.helpers.project import FAST, TINY

pytestmark = pytest.mark.distributed

STEPS = 12
BASE = [*FAST, f"train.steps={STEPS}", "checkpoint.interval_steps=4"]
"""test_checkpointing.py's ZeRO-2 runs, so one uninterrupted run could serve both modules."""


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def failures(run_dir: Path) -> list[AttemptFailed]:
    return [e for e in RunDir(run_dir).history() if isinstance(e, AttemptFailed)]


def run(run_dir: Path, *overrides: str):
    return orch("run", str(TINY), *BASE, *overrides, "--run-dir", str(run_dir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same recipe trained without a fault."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run(run_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def rank_pids(run_dir: Path) -> dict[int, int]:
    """The pids the node launcher gave its newest ranks, from its log (forked ranks share its command line)."""
    started = [line for line in (run_dir / "logs" / "launcher.log").read_text().splitlines() if "started rank" in line][-1]
    return {int(rank): int(pid) for rank, pid in re.findall(r"rank (\d+) \(pid (\d+)\)", started)}


def test_a_sigkilled_rank_is_restarted_in_the_same_run_bit_exact(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = start_orch("run", str(TINY), *BASE, "--run-dir", str(run_dir))
    try:
        wait_for_rows(process, run_dir, 6)
        os.kill(rank_pids(run_dir)[1], signal.SIGKILL)  # as the OOM killer or a device fault would
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            kill_run(run_dir)
    assert process.returncode == 0, out + err
    assert losses(run_dir) == losses(reference)  # every step's loss, to the last bit
    (failed,) = failures(run_dir)
    assert (failed.failure, failed.ranks, failed.restarting, failed.restarts, failed.detail) == ("crash", [1], True, 1, "rank 1 killed by SIGKILL")
    assert "attempt 1 failed: crash (rank 1 killed by SIGKILL" in err
    assert any(isinstance(e, Resumed) for e in RunDir(run_dir).history())
    spent = read_summary(RunDir(run_dir)).ledger  # the goodput ledger: the fault's cost, by cause, adding up to the wall time
    assert spent.badput.restart_s > 0 and spent.badput.recomputed_s > 0 and spent.badput.startup_s > 0 and spent.productive_s > 0
    assert spent.productive_s + sum(spent.by_cause().values()) == pytest.approx(spent.wall_s)


def test_a_rank_raising_mid_step_is_restarted_bit_exact(tmp_path, reference, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "raise@6:rank1")
    result = run(run_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert losses(run_dir) == losses(reference)
    (failed,) = failures(run_dir)
    assert (failed.failure, failed.ranks, failed.restarting, failed.evidence) == ("crash", [1], True, "logs/rank-1.log")
    assert "injected fault" in (run_dir / failed.evidence).read_text()


def test_restarts_used_up_end_the_run_with_one_line_and_its_checkpoints_intact(tmp_path, monkeypatch):
    """The fault comes back at every attempt (step 4, after the checkpoint of step 2): one restart, then none.
    Saves are synchronous here so that the checkpoint has committed before step 3's collectives, which
    rank 1 passes before it raises."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "raise@4:rank1:always")
    result = orch("run", str(TINY), *FAST, f"train.steps={STEPS}", "checkpoint.interval_steps=2", "checkpoint.async_save=false",
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


@pytest.mark.parametrize("fault", ["stop@6:rank1", "stop@8:save:rank1"])  # mid-step; during the checkpoint save of step 8
def test_a_hung_rank_is_found_and_the_attempt_restarted_bit_exact(tmp_path, reference, monkeypatch, fault):
    """A rank that stops (SIGSTOP, as a stuck collective or a wedged device leaves it): the watchdog
    ends the attempt after its step timeout, and the launcher restarts it (the fault fires once)."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("ORCH_INJECT_FAULTS", fault)
    result = run(run_dir, "fault_tolerance.timeouts.setup_s=300", "fault_tolerance.timeouts.step_s=5",
                 "fault_tolerance.timeouts.checkpoint_s=5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert losses(run_dir) == losses(reference)
    (failed,) = failures(run_dir)
    assert (failed.failure, failed.ranks, failed.restarting, failed.evidence) == ("hang", [1], True, "hangs/1")
    assert (run_dir / "hangs" / "1" / "rank-1.txt").exists()
    assert read_summary(RunDir(run_dir)).ledger.badput.hang_s == 5  # the step or checkpoint timeout, waited for
