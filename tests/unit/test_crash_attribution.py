"""A restart's two cheap facts from the attempt before it: which rank a crash started on (the rank
whose fatal exception came first, `launch.rank_errors`, not whose log went quiet first), and the CPU
peak its ranks measured, handed to the restarted ranks instead of measured again (`launch.peak_flops`)."""

from __future__ import annotations

import os
import signal

import pytest

from launch import peak_flops, rank_errors
from launch.restarts import Restarts, failed_ranks
from orchestrator.recovery.spec import FaultToleranceSpec
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.recovery_events import RanksFailed
from orchestrator.rundir.rows import Start
from tests.unit.test_restart_policy import Ended
from tests.unit.test_status import fake_run

S = 1_000_000_000  # ns


@pytest.fixture
def run(tmp_path) -> RunDir:
    return RunDir(fake_run(tmp_path, "run", [], []))


def _written(path, at_ns: int, text: str = "Traceback ...\n") -> None:
    path.write_text(text)
    os.utime(path, ns=(at_ns, at_ns))


def test_the_rank_that_raised_first_is_named_though_its_peer_finished_its_log_first(run):
    """Horovod: rank 1 raised; rank 2's collective failed on the closed connection at once and its
    traceback was written before rank 1's (a log that went quiet first is no sure sign)."""
    _written(run.rank_error(1), 10 * S)
    _written(run.rank_error(2), 11 * S)
    _written(run.rank_log(1), 13 * S)
    _written(run.rank_log(2), 12 * S)
    assert list(failed_ranks([Ended(1), Ended(1)], first=1, run=run)) == [1, 2]


def test_a_rank_with_no_record_is_timed_by_its_log(run):
    """Rank 1 ended without an exception (SIGKILL, os._exit) after its last line; rank 2 raised on the
    closed connection after that, though its own log was last written earlier."""
    _written(run.rank_log(1), 10 * S)
    _written(run.rank_log(2), 9 * S)
    _written(run.rank_error(2), 11 * S)
    assert list(failed_ranks([Ended(-signal.SIGKILL), Ended(1)], first=1, run=run)) == [1, 2]


def test_a_launcher_of_one_node_among_several_reports_when_its_first_rank_raised(run):
    _written(run.rank_log(3), 20 * S)
    _written(run.rank_error(3), 15 * S)
    restarts = Restarts(run, FaultToleranceSpec(), node=1, nodes=2)
    restarts.begin()
    restarts.after(1, [Ended(0, killed=True), Ended(1)], 2)
    (failed,) = [e for e in run.history() if isinstance(e, RanksFailed)]
    assert failed.ranks == [3] and failed.quiet_since == pytest.approx(15)


def test_a_rank_records_the_exception_that_ends_it_and_the_launcher_clears_it(run):
    with pytest.raises(RuntimeError), rank_errors.recorded(run, 0):
        raise RuntimeError("injected fault")
    assert "RuntimeError: injected fault" in run.rank_error(0).read_text()
    with pytest.raises(SystemExit), rank_errors.recorded(run, 1):
        raise SystemExit("cannot resume from step-00000010")
    assert "cannot resume" in run.rank_error(1).read_text()
    with pytest.raises(SystemExit), rank_errors.recorded(run, 2):
        raise SystemExit(0)  # a clean end is no failure
    assert not run.rank_error(2).exists()
    rank_errors.clear(run, range(0, 3))
    assert not run.rank_error(0).exists() and not run.rank_error(1).exists()


def test_a_restart_gets_the_peak_its_previous_attempt_measured(run, monkeypatch):
    restarts = Restarts(run, FaultToleranceSpec(), node=0, nodes=1)
    restarts.begin()
    assert restarts.rank_env == {}  # the first attempt measures
    events.append(run.events, Start(step=0, world_size=2, peak_flops_per_device=4.25e10))
    assert restarts.after(1, [Ended(1)], 0)
    assert restarts.rank_env == {peak_flops.MEASURED_ENV: repr(4.25e10)}
    restarts.begin()  # the second attempt fails before its start: the first one's figure stays
    restarts.after(1, [Ended(1)], 0)
    assert restarts.rank_env == {peak_flops.MEASURED_ENV: repr(4.25e10)}

    def measure():
        raise AssertionError("a restart measures nothing")

    monkeypatch.setattr(peak_flops, "measure_matmul_flops", measure)
    monkeypatch.setenv(peak_flops.MEASURED_ENV, restarts.rank_env[peak_flops.MEASURED_ENV])
    assert peak_flops.peak_flops_per_device(1e12, "cpu", lambda values: values) == 4.25e10
    assert peak_flops.peak_flops_per_device(1e12, "gpu", lambda values: values) == 1e12  # the plan's datasheet peak
    monkeypatch.delenv(peak_flops.MEASURED_ENV)
    monkeypatch.setattr(peak_flops, "measure_matmul_flops", lambda: 3e10)
    assert peak_flops.peak_flops_per_device(1e12, "cpu", lambda values: [v / 2 for v in values]) == 1.5e10  # averaged across ranks
