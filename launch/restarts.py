"""In-job restarts (issue 31): what ended an attempt of this node's ranks (its failure class), and
whether the node launcher starts another one by itself.

A fault ends the attempt with every rank of the node down (`launch.node._wait` kills the peers of a
rank that failed; the watchdog ends all of them on a hang). When this launcher runs the whole job
(`--nnodes 1`), it forks the ranks again from itself, whose libraries stay imported, so a restart
costs the ranks' own set-up and not the imports (nor the CPU peak for MFU: the ranks get the one the
attempt before measured, `launch.peak_flops`); they resume from the newest verified checkpoint
by themselves (`launch.loop.Trainer.resume`), as a new `orch run` would, in a new rendezvous round
on the same port: torch's store listens through libuv, which binds with SO_REUSEADDR, so the port of
the killed attempt's store is free again at once (no TIME_WAIT wait; every restart in the tests rebinds it).

How often, and which faults are worth a restart, is `orchestrator.shared.restarts`' rule (the
Slurm batch step applies the same one across nodes): `fault_tolerance.max_restarts` within
`restart_window_minutes`, counted from the run's own `attempt_failed` events, so an `orch run`
started again later counts what the run already used in the window; no restart for `nan`, for a
second failure in a row before any step, or with `fault_tolerance.enabled: false`. A launcher of
one node among several restarts nothing: it records what its own ranks did (a `ranks_failed` event;
its watchdog's `hang` event says a hang) and exits, and the batch step decides for the whole job.
Every attempt that ends on a fault gets one `attempt_failed` event, with its class: `crash` (a
rank's non-zero exit or a signal), `hang` (EXIT_HANG, the watchdog's), `oom` (a rank's EXIT_OOM, or
a SIGKILL while the kernel's OOM-kill counter rose), `nan` (EXIT_NAN: rolling back did not cure
the loss). A stop that was asked for (a forwarded preemption signal, `orch run`'s end) never
reaches here, nor do the clean stops (0, EXIT_REQUEUE, EXIT_BUDGET).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from launch.launcher_log import say
from launch.peak_flops import reuse_env
from launch.rank_errors import failed_at_ns
from launch.spawn import Rank
from orchestrator.errors import EXIT_HANG, EXIT_NAN, EXIT_OOM
from orchestrator.recovery.spec import FaultToleranceSpec
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.recovery_events import AttemptFailed, FailureClass, Hang, RanksFailed
from orchestrator.shared.restarts import CLEAN_EXITS, next_attempt, no_restart, restarts_in_window, trained_a_step


@dataclass(frozen=True)
class Fault:
    failure: FailureClass
    detail: str
    ranks: list[int]
    evidence: str | None
    """Relative to the run directory."""


class Restarts:
    """One node launcher's attempts: `begin` before its ranks start, `after` once they have all ended."""

    def __init__(self, run: RunDir, spec: FaultToleranceSpec, node: int, nodes: int):
        self.run, self.spec, self.node, self.single_node = run, spec, node, nodes == 1
        self.number = 0
        self.since = 0.0
        self.oom_kills: int | None = None
        self.idle_failure = False
        """The previous attempt of this launcher failed before training a step."""
        self.rank_env: dict[str, str] = {}
        """What this launcher's next attempt's ranks get from the attempts before it (`launch.peak_flops`)."""

    def begin(self) -> int:
        """The attempt's number in the run (1 for its first), from the run's records."""
        self.since, self.oom_kills = time.time(), oom_kill_count()
        self.number = next_attempt(self.run.history())
        return self.number

    def after(self, code: int, ranks: list[Rank], first: int) -> bool:
        """Whether to start another attempt, after one whose launcher exit code is `code`; a fault
        is recorded (an `attempt_failed` event) and said in the launcher's log."""
        if code in CLEAN_EXITS:
            return False
        history = [e for e in self.run.history() if (e.time or 0) >= self.since]
        self.rank_env = reuse_env(history) or self.rank_env
        fault = classify(code, failed_ranks(ranks, first, self.run), self._oom_killed(), _last(history, Hang), self.run)
        if not self.single_node:
            if fault.failure != "hang":
                events.append(self.run.events, RanksFailed(
                    node=self.node, attempt=self.number, failure=fault.failure, detail=fault.detail, ranks=fault.ranks,
                    evidence=fault.evidence, quiet_since=_failed_since(self.run, fault.ranks[0]) if fault.ranks else None))
            return False
        idle = not trained_a_step(self.run, history)
        used = restarts_in_window(self.run.history(), self.spec)
        reason = no_restart(self.spec, fault.failure, idle, self.idle_failure, used)
        self.idle_failure = idle
        restarting = reason is None
        event = AttemptFailed(attempt=self.number, failure=fault.failure, detail=fault.detail, ranks=fault.ranks, restarting=restarting,
                              restarts=used + restarting, max_restarts=self.spec.max_restarts if self.spec.enabled else 0,
                              evidence=fault.evidence, no_restart=reason)
        events.append(self.run.events, event)
        say(event.describe())
        return restarting

    def _oom_killed(self) -> bool:
        now = oom_kill_count()
        return self.oom_kills is not None and now is not None and now > self.oom_kills


def classify(code: int, failed: dict[int, int], oom_killed: bool, hang: Hang | None, run: RunDir) -> Fault:
    """The failure class of an attempt whose launcher exit code is `code`; `failed`: the exit code
    of each rank that failed by itself (by global rank; a signal as its negative number)."""
    if code == EXIT_HANG:
        if hang is None:
            return Fault("hang", "the watchdog ended the attempt", [], None)
        where = f"in {hang.phase} of step {hang.step}" if hang.step is not None else f"in {hang.phase}"
        ranks = hang.stopped_ranks or []
        return Fault("hang", f"rank(s) {', '.join(map(str, ranks)) or '?'} stopped reporting {where}", ranks, hang.stacks)
    rank, rank_code = next(iter(failed.items()), (None, code))
    evidence = str(run.rank_log(rank).relative_to(run.path)) if rank is not None else None
    ranks = [rank] if rank is not None else []
    who = f"rank {rank}" if rank is not None else "a rank"
    oom = next(((r, c) for r, c in failed.items() if c == EXIT_OOM or (c == -signal.SIGKILL and oom_killed)), None)
    if oom is not None:
        rank, rank_code = oom
        how = "ran out of memory" if rank_code == EXIT_OOM else "killed by SIGKILL while the kernel's OOM killer counted a kill"
        return Fault("oom", f"rank {rank} {how}", [rank], str(run.rank_log(rank).relative_to(run.path)))
    if rank_code == EXIT_NAN:
        return Fault("nan", f"{who} stopped on a loss that rolling back did not cure", ranks, evidence)
    how = f"killed by {signal.Signals(-rank_code).name}" if rank_code < 0 else f"exited {rank_code}"
    return Fault("crash", f"{who} {how}", ranks, evidence)


def failed_ranks(ranks: list[Rank], first: int, run: RunDir) -> dict[int, int]:
    """Each rank that failed by itself, by global rank, with its exit code, the one that failed first
    first; the peers the launcher killed after it are left out (when all were killed, as by the
    watchdog, all are in). Peers often fail by themselves too, before the launcher's next poll: their
    collective reports the closed connection, after the first rank's exception ended its process. So
    the first is the rank whose fatal exception came first, or whose log went quiet first where a rank
    recorded none (`launch.rank_errors`; torchelastic names the earliest error as the root cause too)."""
    codes = {first + local: rank.poll() for local, rank in enumerate(ranks)}
    failed = {r: c for r, c in codes.items() if c is not None and c not in CLEAN_EXITS}
    chosen = {r: c for r, c in failed.items() if not ranks[r - first].killed} or failed
    return dict(sorted(chosen.items(), key=lambda item: (failed_at_ns(run, item[0]), item[0])))


def _failed_since(run: RunDir, rank: int) -> float | None:
    """When the rank failed (`failed_at_ns`), in seconds since the epoch; None when nothing says."""
    failed_ns = failed_at_ns(run, rank)
    return failed_ns / 1e9 if math.isfinite(failed_ns) else None


def oom_kill_count(cgroup_root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> int | None:
    """The kernel's count of OOM kills: this process's cgroup's (v2 `memory.events`, which a Slurm
    job's cgroup scopes to the job) where there is one, else the machine's (`/proc/vmstat`; another
    process killed at the same moment then reads as ours). None where neither can be read."""
    try:
        groups = [line[3:] for line in (proc / "self" / "cgroup").read_text().splitlines() if line.startswith("0::")]
    except OSError:
        groups = []
    for path in [*(cgroup_root / group.lstrip("/") / "memory.events" for group in groups), proc / "vmstat"]:
        try:
            return int(dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())["oom_kill"])
        except (OSError, KeyError, ValueError):
            continue
    return None


def _last(history: list[BaseEvent], kind: type) -> BaseEvent | None:
    return next((e for e in reversed(history) if isinstance(e, kind)), None)
