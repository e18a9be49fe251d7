"""The node launcher's watchdog: ends an attempt whose ranks stopped making progress, with the evidence.

A rank stuck in a collective (a peer stopped, a dead link, a wedged GPU) is alive and silent: no
exit code tells the launcher anything, and the process group's own timeout comes late (it is set
past the watchdog's, `FaultToleranceSpec.process_group_timeout_s`) and says nothing about which
rank stopped. So every rank reports its phase (`launch.progress`) and, at each poll of
`launch.node._wait`, the watchdog times each live local rank's current phase against
`fault_tolerance.timeouts`: fixed, or `auto` from the longest that phase has taken in this attempt
on this node (as NVRx computes its section timeouts). Past one, it writes every live local rank's
stacks to `hangs/<attempt>/rank-<N>.txt` (`launch.stack_dumps`), names the rank(s) furthest behind,
records a `hang` event and says it in the launcher's log; the launcher then ends the ranks and exits
EXIT_HANG. With `fault_tolerance.enabled: false` nothing is watched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from orchestrator.shared.restarts import next_attempt
from launch.launcher_log import say
from launch.progress import PROGRESS_DIR_ENV, Report, read_report, record_path, stacks_path
from launch.spawn import Rank
from launch.stack_dumps import dump_stacks, process_state, stopped
from orchestrator.recovery.spec import TimeoutsSpec
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_recipe
from orchestrator.rundir.recovery_events import Hang, phase_of_step

NODE_LOCAL_ROOT = Path("/dev/shm")
"""Memory-backed and on this node; $TMPDIR where it is missing."""
PROGRESS_PREFIX = "orch-progress-"

ORDER_IN_A_STEP = {"setup": 0, "step": 1, "evaluation": 2, "checkpoint": 3}
"""How far a rank has come within one step: the loop evaluates, then saves, after a step's update."""


# -- the decisions, pure ------------------------------------------------------------------------


def longest_by_phase(reports: list[Report]) -> dict[str, float]:
    """The longest each phase has taken on any of the ranks (only phases seen once appear)."""
    longest: dict[str, float] = {}
    for report in reports:
        for phase, seconds in report.longest_s.items():
            longest[phase] = max(longest.get(phase, 0.0), seconds)
    return longest


def overdue(reports: dict[int, Report], now_s: float, timeouts: TimeoutsSpec) -> list[int]:
    """The ranks whose current phase has lasted past its timeout."""
    longest = longest_by_phase(list(reports.values()))
    return [rank for rank, report in sorted(reports.items())
            if now_s - report.since_s > timeouts.limit_s(report.phase, longest.get(report.phase))]


def furthest_behind(reports: dict[int, Report], states: dict[int, str | None]) -> list[int]:
    """The rank(s) that stopped reporting first. A stopped rank stays at step k while its peers report
    step k+1 and block in its collective, so: the lowest step, then the earliest phase of it. Peers
    blocked in the same step's collective as the stopped rank tie with it; there the kernel breaks
    the tie where it can (a process in state T is stopped), else all of them are named."""
    def position(rank: int) -> tuple[int, int]:
        report = reports[rank]
        return (-1 if report.step is None else report.step, ORDER_IN_A_STEP[report.phase])

    first = min(map(position, reports))
    behind = [rank for rank in sorted(reports) if position(rank) == first]
    halted = [rank for rank in behind if stopped(states.get(rank))]
    return halted or behind


# -- the launcher's side --------------------------------------------------------------------------


class NoWatchdog:
    """`fault_tolerance.enabled: false`: the ranks report nothing and nothing is timed."""

    rank_env: dict[str, str] = {}

    def check(self, ranks: list[Rank]) -> Hang | None:
        return None


class Watchdog:
    def __init__(self, run: RunDir, timeouts: TimeoutsSpec, node: int, first: int, directory: Path):
        self.run, self.timeouts, self.node, self.first, self.directory = run, timeouts, node, first, directory
        self.attempt = next_attempt(run.history())
        self.started_s = time.monotonic()
        self.last: dict[int, Report] = {}

    @property
    def rank_env(self) -> dict[str, str]:
        """What each rank needs to report: where its record goes."""
        return {PROGRESS_DIR_ENV: str(self.directory)}

    def reports(self, ranks: list[Rank]) -> dict[int, Report]:
        """Each live rank's last report by global rank; set-up since the watchdog began for one that has not
        reported yet; the previous one where a record was read half written."""
        for local, rank in enumerate(ranks):
            report = read_report(record_path(self.directory, self.first + local))
            if report is not None:
                self.last[local] = report
        return {self.first + local: self.last.get(local, Report("setup", None, self.started_s))
                for local, rank in enumerate(ranks) if rank.poll() is None}

    def check(self, ranks: list[Rank]) -> Hang | None:
        """None while every live rank is within its phase's timeout; else the `hang` event, its evidence written."""
        reports = self.reports(ranks)
        now_s = time.monotonic()
        if not overdue(reports, now_s, self.timeouts):
            return None
        pids = {self.first + local: rank.pid for local, rank in enumerate(ranks) if self.first + local in reports}
        behind = furthest_behind(reports, {rank: process_state(pid) for rank, pid in pids.items()})
        last = reports[behind[0]]
        timeout_s = self.timeouts.limit_s(last.phase, longest_by_phase(list(reports.values())).get(last.phase))
        # The ranks are ended whatever happens here: evidence that cannot be written (a full disk) is said instead.
        try:
            stacks = self.write_stacks(reports, pids, now_s)
        except OSError as error:
            stacks = None
            say(f"the hung ranks' stacks could not be written: {error}")
        event = Hang(node=self.node, attempt=self.attempt, phase=last.phase, step=last.step, timeout_s=timeout_s,
                     stopped_ranks=behind, stacks=stacks)
        try:
            event = events.append(self.run.events, event)
        except OSError as error:
            say(f"the hang could not be recorded in {self.run.events.name}: {error}")
        say(event.describe())
        return event

    def write_stacks(self, reports: dict[int, Report], pids: dict[int, int], now_s: float) -> str:
        """Every live local rank's stacks in the run directory; returns where, relative to it. Taken all at
        once: a node of eight ranks should not wait for eight py-spy attaches (or faulthandler answers) in turn."""
        folder = self.run.hangs / str(self.attempt)
        folder.mkdir(parents=True, exist_ok=True)

        def write(rank: int) -> None:
            report = reports[rank]
            where = f"rank {rank}: in {phase_of_step(report.phase, report.step)} for {now_s - report.since_s:.1f} s when the watchdog acted\n"
            (folder / f"rank-{rank}.txt").write_text(where + dump_stacks(pids[rank], stacks_path(self.directory, rank)))

        with ThreadPoolExecutor(max_workers=len(pids)) as pool:
            list(pool.map(write, pids))  # list(): an error in one is raised here
        return str(folder.relative_to(self.run.path))


def remove_stale_progress_dirs(root: Path) -> None:
    """The directories of launchers that are gone: a SIGKILLed launcher (a test's kill, the OOM killer)
    runs no clean-up, so the next one on the node removes them (each is named after its launcher's pid)."""
    for path in root.glob(f"{PROGRESS_PREFIX}*-*"):
        pid = path.name[len(PROGRESS_PREFIX):].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def node_local_root() -> Path:
    return NODE_LOCAL_ROOT if NODE_LOCAL_ROOT.is_dir() and os.access(NODE_LOCAL_ROOT, os.W_OK) else Path(tempfile.gettempdir())


@contextmanager
def watching(run_dir: Path, node: int, first: int) -> Iterator[Watchdog | NoWatchdog]:
    """The watchdog for one attempt of this node's ranks (`first`: the global rank of its first), with
    the directory its ranks report into, removed when the attempt ends."""
    run = RunDir(run_dir)
    spec = read_recipe(run).fault_tolerance
    if not spec.enabled:
        yield NoWatchdog()
        return
    remove_stale_progress_dirs(node_local_root())
    directory = Path(tempfile.mkdtemp(prefix=f"{PROGRESS_PREFIX}{os.getpid()}-", dir=node_local_root()))
    try:
        yield Watchdog(run, spec.timeouts, node, first, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
