"""The watchdog's pieces without training: the progress record, the phase timeouts, which rank is named,
the attempt number, and the stacks of real processes (one SIGSTOPped) taken by py-spy or faulthandler."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from launch import progress, stack_dumps
from orchestrator.shared.restarts import next_attempt
from launch.engines import process_group_timeout_s
from launch.progress import PROGRESS_DIR_ENV, Report, read_report, record_path
from launch.watchdog import Watchdog, furthest_behind, node_local_root, overdue, remove_stale_progress_dirs, watching
from orchestrator.recipe.loader import load_recipe
from orchestrator.recovery.spec import TimeoutsSpec
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.recovery_events import AttemptFailed, Hang
from orchestrator.rundir.rows import Start
from tests.helpers.project import ROOT, TINY


def test_a_record_reads_back_and_a_torn_one_reads_as_none():
    report = Report("evaluation", 12, 345.5, {"setup": 9.0, "step": 0.25})
    record = report.encode()
    assert Report.decode(record) == report
    assert Report.decode(Report("setup", None, 1.0).encode()) == Report("setup", None, 1.0)
    torn = bytearray(record)
    torn[9] ^= 0xFF  # a byte of the step, changed while the launcher read it
    assert Report.decode(bytes(torn)) is None
    assert Report.decode(record[:10]) is None and Report.decode(b"") is None


def test_a_rank_measures_its_phases_and_a_rank_without_the_variable_reports_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "_reporter", None)
    monkeypatch.delenv(PROGRESS_DIR_ENV, raising=False)
    progress.start_reporting(0)
    progress.report("step", 1)
    assert progress._reporter is None and not list(tmp_path.iterdir())

    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path))
    clock = iter([10.0, 40.0, 41.0, 41.5, 44.0, 44.2])
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    progress.start_reporting(3)
    for phase, step in [("step", 1), ("step", 2), ("checkpoint", 2), ("step", 3), ("evaluation", 3)]:
        progress.report(phase, step)
    assert read_report(record_path(tmp_path, 3)) == Report("evaluation", 3, 44.2, {"setup": 30.0, "step": 1.0, "checkpoint": 2.5})


def test_a_rank_never_fails_on_reporting(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "_reporter", None)
    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path / "gone"))
    progress.start_reporting(0)  # the directory does not exist
    progress.report("step", 1)
    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path))
    progress.start_reporting(0)
    os.close(progress._reporter.fd)  # a write that fails
    progress.report("step", 2)


AUTO = TimeoutsSpec(setup_s=100, auto_factor=5, auto_floor_s=2)


def test_a_phase_not_seen_yet_gets_the_set_up_timeout_then_a_multiple_of_its_longest():
    first_step = {0: Report("step", 1, 0.0, {"setup": 30.0})}
    assert overdue(first_step, 99.0, AUTO) == [] and overdue(first_step, 101.0, AUTO) == [0]
    # Step 1 took 3 s on rank 1 (the longest here): 15 s for every rank's step, set-up's 100 s for a first checkpoint.
    later = {0: Report("step", 2, 0.0, {"step": 1.0}), 1: Report("checkpoint", 2, 0.0, {"step": 3.0})}
    assert overdue(later, 14.0, AUTO) == [] and overdue(later, 16.0, AUTO) == [0]
    assert overdue(later, 101.0, AUTO) == [0, 1]
    # Never under the floor; a fixed timeout whatever was seen.
    assert overdue({0: Report("step", 9, 0.0, {"step": 0.01})}, 1.9, AUTO) == []
    fixed = TimeoutsSpec(setup_s=100, step_s=3, auto_floor_s=2)
    assert overdue({0: Report("step", 1, 0.0, {})}, 3.5, fixed) == [0]


def test_the_rank_furthest_behind_is_named():
    # The stopped rank stays at step 7; its peers reported step 8 and wait for it in a collective.
    assert furthest_behind({0: Report("step", 8, 5.0), 1: Report("step", 7, 1.0), 2: Report("step", 8, 4.0)}, {}) == [1]
    assert furthest_behind({0: Report("checkpoint", 7, 1.0), 1: Report("evaluation", 7, 2.0)}, {}) == [1]
    assert furthest_behind({0: Report("step", 1, 1.0), 1: Report("setup", None, 0.0)}, {}) == [1]
    # Stopped mid-step: its peers block in the same step's collective. The kernel says which is stopped.
    tie = {0: Report("step", 7, 1.0), 1: Report("step", 7, 1.5)}
    assert furthest_behind(tie, {0: "S", 1: "T"}) == [1]
    assert furthest_behind(tie, {0: "S", 1: "S"}) == [0, 1]


def test_attempts_are_counted_from_the_history(tmp_path):
    run = RunDir(tmp_path)
    assert next_attempt(run.history()) == 1
    events.append(run.events, Start(step=0))
    events.append(run.events, Start(step=8))
    assert next_attempt(run.history()) == 3
    events.append(run.events, Hang(attempt=3, phase="setup"))  # hung before its start event
    assert next_attempt(run.history()) == 4
    events.append(run.events, AttemptFailed(attempt=4, failure="crash"))
    assert next_attempt(run.history()) == 5


RANK = """
import os, signal, sys, time
from launch import progress
rank = int(sys.argv[1])
progress.start_reporting(rank)
for step in range(1, 4):
    progress.report("step", step)
if rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)  # stopped within step 3
progress.report("step", 4)  # rank 0 goes on, then waits for rank 1 "in a collective"
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def hung_ranks(tmp_path):
    """Two processes that report like ranks: rank 1 stops itself in step 3, rank 0 waits in step 4."""
    directory = tmp_path / "progress"
    directory.mkdir()
    env = {**os.environ, PROGRESS_DIR_ENV: str(directory)}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(rank)], cwd=ROOT, env=env) for rank in (0, 1)]
    try:
        yield directory, ranks
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()


def _watch_until_hung(tmp_path, directory, ranks) -> Hang:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    watchdog = Watchdog(run, TimeoutsSpec(setup_s=30, step_s=1), node=0, first=0, directory=directory)
    deadline = time.monotonic() + 60
    while (hang := watchdog.check(ranks)) is None:
        assert time.monotonic() < deadline, "no hang found within 60 s"
        time.sleep(0.1)
    assert run.history() == [hang]
    return hang


def test_a_stopped_rank_is_named_and_every_ranks_stacks_are_taken_by_py_spy(tmp_path, hung_ranks):
    assert stack_dumps.py_spy() is not None, "py-spy is one of the project's requirements: `make setup` installs it"
    hang = _watch_until_hung(tmp_path, *hung_ranks)
    assert (hang.attempt, hang.phase, hang.step, hang.timeout_s, hang.stopped_ranks, hang.stacks) == (1, "step", 3, 1, [1], "hangs/1")
    stacks = {rank: (tmp_path / "run" / "hangs" / "1" / f"rank-{rank}.txt").read_text() for rank in (0, 1)}
    assert "rank 1: in step 3 for " in stacks[1] and "stopped (state T)" in stacks[1]
    assert all("stacks by py-spy" in text and "<module> (<string>" in text for text in stacks.values()), stacks


def test_without_py_spy_faulthandler_answers_and_a_stopped_rank_is_said_to_be_stopped(tmp_path, hung_ranks, monkeypatch):
    monkeypatch.setattr(stack_dumps, "py_spy", lambda: None)
    hang = _watch_until_hung(tmp_path, *hung_ranks)
    assert hang.stopped_ranks == [1]
    stacks = {rank: (tmp_path / "run" / "hangs" / "1" / f"rank-{rank}.txt").read_text() for rank in (0, 1)}
    assert "py-spy is not installed; stacks by faulthandler" in stacks[0] and 'File "<string>", line' in stacks[0]
    assert "did not answer: stopped (state T)" in stacks[1]
    assert hung_ranks[1][0].poll() is None  # rank 0 answered the signal and lives on: only the launcher ends ranks


def test_the_process_group_waits_past_every_watchdog_timeout_and_keeps_the_librarys_own_when_off():
    on = load_recipe(TINY, ["fault_tolerance.timeouts.setup_s=120", "fault_tolerance.timeouts.auto_floor_s=60"]).recipe
    assert process_group_timeout_s(on) == 120 + 300  # past set-up, the longest the watchdog allows a phase it has not seen, by a margin
    assert process_group_timeout_s(load_recipe(TINY, ["fault_tolerance.enabled=false"]).recipe) is None


@pytest.mark.parametrize("enabled", [True, False])
def test_the_ranks_report_into_a_node_local_directory_that_ends_with_the_attempt_and_none_when_off(tmp_path, enabled):
    recipe = load_recipe(TINY, [f"fault_tolerance.enabled={str(enabled).lower()}"]).recipe
    RunDir(tmp_path).recipe.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    with watching(tmp_path, node=0, first=0) as watchdog:
        if not enabled:
            assert watchdog.rank_env == {} and watchdog.check([]) is None
            return
        directory = Path(watchdog.rank_env[PROGRESS_DIR_ENV])
        assert directory.is_dir() and directory.parent == node_local_root() and tmp_path not in directory.parents
    assert not directory.exists()


def test_a_hang_whose_evidence_cannot_be_written_still_ends_the_attempt(tmp_path, hung_ranks):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    watchdog = Watchdog(run, TimeoutsSpec(setup_s=30, step_s=1), node=0, first=0, directory=hung_ranks[0])
    run.hangs.write_text("a file where the folder should be")  # every write under hangs/ fails
    run.events.mkdir()  # and so does appending an event
    deadline = time.monotonic() + 60
    while (hang := watchdog.check(hung_ranks[1])) is None:
        assert time.monotonic() < deadline, "no hang found within 60 s"
        time.sleep(0.1)
    assert hang.stopped_ranks == [1] and hang.stacks is None


def test_a_killed_launchers_progress_directory_is_removed_by_the_next_one(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    gone, live = tmp_path / f"orch-progress-{ended.pid}-abc", tmp_path / f"orch-progress-{os.getpid()}-def"
    for directory in (gone, live):
        directory.mkdir()
        (directory / "rank-0.progress").write_bytes(b"x")
    remove_stale_progress_dirs(tmp_path)
    assert not gone.exists() and live.exists()
