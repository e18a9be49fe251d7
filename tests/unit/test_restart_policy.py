"""In-job restarts decided from the run's own records (launch/restarts.py): each attempt's failure
class, the restarts counted within the window (an earlier `orch run`'s too), what is never
restarted; and how `orch status` and `orch show` tell them."""

from __future__ import annotations

import os
import signal
import time

import pytest
from typer.testing import CliRunner

from launch.oom import exit_on_oom
from launch.restarts import Restarts, classify, failed_ranks, oom_kill_count
from orchestrator.cli import app
from orchestrator.errors import EXIT_HANG, EXIT_NAN, EXIT_OOM
from orchestrator.recovery.spec import FaultToleranceSpec
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.recovery_events import AttemptFailed, Hang, RanksFailed
from orchestrator.rundir.rows import Start
from tests.unit.test_status import fake_run


class Ended:
    """A rank that has ended with `code`; `killed`: by its launcher, after a peer failed."""

    def __init__(self, code: int, killed: bool = False):
        self.pid, self.code, self.killed = 0, code, killed

    def poll(self) -> int:
        return self.code


@pytest.fixture
def run(tmp_path) -> RunDir:
    return RunDir(fake_run(tmp_path, "run", [], []))


def test_the_rank_that_failed_first_is_named_not_the_peers_that_failed_after_it(run):
    failed = failed_ranks([Ended(-signal.SIGKILL, killed=True), Ended(-signal.SIGKILL)], first=0, run=run)
    assert failed == {1: -signal.SIGKILL}  # rank 0 was killed by the launcher
    # Rank 2 raised; rank 1's collective then failed on the closed connection, and it printed so after.
    for rank, written_ns in ((1, 2_000_000_000), (2, 1_000_000_000)):
        run.rank_log(rank).write_text("Traceback ...\n")
        os.utime(run.rank_log(rank), ns=(written_ns, written_ns))
    assert list(failed_ranks([Ended(1), Ended(1)], first=1, run=run)) == [2, 1]
    fault = classify(137, failed, oom_killed=False, hang=None, run=run)
    assert (fault.failure, fault.detail, fault.ranks, fault.evidence) == ("crash", "rank 1 killed by SIGKILL", [1], "logs/rank-1.log")
    assert classify(1, {3: 1}, False, None, run).detail == "rank 3 exited 1"


@pytest.mark.parametrize("codes, oom_killed, failure", [
    ({0: EXIT_OOM}, False, "oom"),                 # MemoryError / torch.OutOfMemoryError in the rank
    ({0: -signal.SIGKILL}, True, "oom"),           # the OOM killer: SIGKILL while the kernel's counter rose
    ({0: -signal.SIGKILL}, False, "crash"),        # the same SIGKILL from anyone else
    ({1: EXIT_NAN}, False, "nan"),
])
def test_failure_classes(run, codes, oom_killed, failure):
    assert classify(1, codes, oom_killed, None, run).failure == failure


def test_a_hang_is_told_from_the_watchdogs_event(run):
    hang = Hang(attempt=2, phase="step", step=7, timeout_s=3, stopped_ranks=[1], stacks="hangs/2")
    fault = classify(EXIT_HANG, {0: -signal.SIGKILL, 1: -signal.SIGKILL}, False, hang, run)
    assert (fault.failure, fault.ranks, fault.evidence) == ("hang", [1], "hangs/2")
    assert "rank(s) 1 stopped reporting in step of step 7" in fault.detail


def _fail(restarts: Restarts, code: int = 1, trained: bool = True) -> AttemptFailed:
    """One attempt of `restarts` ending with `code`, after training a step or not; its recorded event."""
    restarts.begin()
    if trained:
        events.append(restarts.run.events, Start(step=0))
        events.append_row(restarts.run.metrics, {"step": 1, "loss": 1.0})
    restarts.after(code, [Ended(code)], first=0)
    return restarts.run.history()[-1]


def test_restarts_up_to_the_limit_within_the_window_counted_from_the_runs_records(run):
    spec = FaultToleranceSpec(max_restarts=2, restart_window_minutes=10)
    # An earlier `orch run` used one restart within the window, and one long before it.
    events.append_row(run.events, AttemptFailed(attempt=1, failure="crash", restarting=True, restarts=1, time=time.time() - 3600).line())
    events.append(run.events, AttemptFailed(attempt=2, failure="crash", restarting=True, restarts=1))
    restarts = Restarts(run, spec, node=0, nodes=1)
    first = _fail(restarts)
    assert (first.restarting, first.restarts, first.max_restarts, first.attempt) == (True, 2, 2, 3)
    last = _fail(restarts)
    assert (last.restarting, last.restarts, last.attempt) == (False, 2, 4)
    assert "no restart left (2 of fault_tolerance.max_restarts=2 used in 10 min)" in last.describe()


def test_a_failure_before_the_first_step_twice_in_a_row_is_not_restarted(run):
    restarts = Restarts(run, FaultToleranceSpec(max_restarts=5), node=0, nodes=1)
    assert _fail(restarts, trained=True).restarting
    assert _fail(restarts, trained=False).restarting  # the first such failure may be a passing one
    last = _fail(restarts, trained=False)
    assert not last.restarting and "before training a step" in last.no_restart


@pytest.mark.parametrize("code, spec", [
    (EXIT_NAN, FaultToleranceSpec()),  # the same data onto the same weights again
    (1, FaultToleranceSpec(enabled=False)),
])
def test_never_restarted(run, code, spec):
    failed = _fail(Restarts(run, spec, node=0, nodes=1), code)
    assert failed.restarting is False and failed.no_restart


@pytest.mark.parametrize("code", [0, 3, 75])  # finished, over its energy budget, stopped on a signal
def test_clean_ends_record_nothing(run, code):
    assert not Restarts(run, FaultToleranceSpec(), node=0, nodes=1).after(code, [Ended(code)], 0)
    assert not Restarts(run, FaultToleranceSpec(), node=1, nodes=2).after(code, [Ended(code)], 1)
    assert not any(isinstance(e, (AttemptFailed, RanksFailed)) for e in run.history())


def test_a_launcher_of_one_node_among_several_records_its_own_failed_rank_and_restarts_nothing(run):
    """The batch step restarts a job of several nodes; it learns from this event which node's rank failed first."""
    log = run.rank_log(3)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("step 6\n")
    restarts = Restarts(run, FaultToleranceSpec(), node=1, nodes=2)
    restarts.begin()
    assert not restarts.after(1, [Ended(0, killed=True), Ended(-signal.SIGKILL)], 2)
    (failed,) = [e for e in run.history() if isinstance(e, RanksFailed)]
    assert (failed.node, failed.attempt, failed.failure, failed.ranks, failed.detail) == (1, 1, "crash", [3], "rank 3 killed by SIGKILL")
    assert failed.evidence == "logs/rank-3.log" and failed.quiet_since == pytest.approx(log.stat().st_mtime)
    assert not any(isinstance(e, AttemptFailed) for e in run.history())


def test_the_oom_kill_counter_of_the_cgroup_else_the_machine(tmp_path):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "vmstat").write_text("pgfault 10\noom_kill 4\n")
    (proc / "self" / "cgroup").write_text("0::/job/step\n")
    assert oom_kill_count(cgroup, proc) == 4
    (cgroup / "job" / "step").mkdir(parents=True)
    (cgroup / "job" / "step" / "memory.events").write_text("low 0\noom 2\noom_kill 1\n")
    assert oom_kill_count(cgroup, proc) == 1
    assert oom_kill_count(tmp_path / "none", tmp_path / "none") is None


def test_a_rank_out_of_memory_exits_with_its_own_code():
    with pytest.raises(SystemExit) as stop, exit_on_oom():
        raise MemoryError()
    assert stop.value.code == EXIT_OOM
    with pytest.raises(ValueError), exit_on_oom():
        raise ValueError("not memory")


def test_status_and_show_name_the_failures(run):
    restarts = Restarts(run, FaultToleranceSpec(max_restarts=1), node=0, nodes=1)
    _fail(restarts, code=-signal.SIGKILL)
    status = CliRunner().invoke(app, ["status", str(run.path)]).output
    assert "RESTARTING" in status and "failures 1 crash (1 restarted in the job)" in status
    _fail(restarts, code=-signal.SIGKILL)
    status = CliRunner().invoke(app, ["status", str(run.path)]).output
    assert "FAILED" in status and "failures 2 crash (1 restarted in the job)" in status
