"""How many in-job restarts a run has left, and which faults are worth one: the rule the node
launcher applies when it runs the whole job (`launch.restarts`) and the Slurm batch step applies
across the nodes of a job (`orchestrator.slurm.batch`), read from the run's own events so that both,
and an `orch run` or a job started again later, count the same restarts.

`fault_tolerance.max_restarts` within `restart_window_minutes`, counted from the `attempt_failed`
events that restarted. Not restarted:
- `nan`: the restarted ranks would replay the same data onto the same weights;
- an attempt that failed before training a step, right after one that failed so too: a fault in
  set-up (a recipe or resume error, a missing file) comes back every time. This is NVRx's
  `max_no_progress_restarts` at its smallest (progress: a step trained beyond the resume point);
  torchelastic restarts anything up to `max_restarts`;
- `fault_tolerance.enabled: false`.
"""

from __future__ import annotations

import time

from orchestrator.errors import EXIT_BUDGET, EXIT_HANG, EXIT_NAN, EXIT_OOM, EXIT_REQUEUE
from orchestrator.recovery.spec import FaultToleranceSpec
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.recovery_events import AttemptFailed, FailureClass, Hang
from orchestrator.rundir.rows import Start

CLEAN_EXITS = (0, EXIT_REQUEUE, EXIT_BUDGET)
"""Ranks that stopped as asked or as the recipe says: no fault."""
FAILURE_OF_EXIT: dict[int, FailureClass] = {EXIT_HANG: "hang", EXIT_OOM: "oom", EXIT_NAN: "nan"}
"""The exit codes that name their fault; any other non-clean end is a `crash`."""
NOT_RESTARTED: dict[str, str] = {"nan": "not restarted: a restart would replay the same data onto the same weights"}


def next_attempt(history: list[BaseEvent]) -> int:
    """The number of the attempt about to start (1 for a run's first), so that every node launcher
    of a job, and of a later requeued job, names an attempt the same way. Each attempt that reaches
    training writes one `start` event; one that failed before (hung or crashed in set-up) wrote no
    `start`, but its failure event names it: one past the larger of the two counts."""
    started = sum(isinstance(event, Start) for event in history)
    named = [event.attempt for event in history if isinstance(event, (Hang, AttemptFailed)) and event.attempt is not None]
    return max([started, *named]) + 1


def restarts_in_window(history: list[BaseEvent], spec: FaultToleranceSpec, now: float | None = None) -> int:
    start = (now or time.time()) - spec.restart_window_minutes * 60
    return sum(1 for e in history if isinstance(e, AttemptFailed) and e.restarting and (e.time or 0) >= start)


def trained_a_step(run: RunDir, since: list[BaseEvent]) -> bool:
    """Whether the attempt whose events are `since` trained a step past the one it resumed from: its
    `start` event, then a logged row beyond it (the resume rewrote the metrics to its checkpoint's)."""
    start = next((e for e in reversed(since) if isinstance(e, Start)), None)
    return start is not None and any(row["step"] > (start.step or 0) for row in run.metric_rows())


def no_restart(spec: FaultToleranceSpec, failure: FailureClass, idle: bool, idle_before: bool, used: int) -> str | None:
    """Why the attempt that ended on `failure` gets no restart (None: it does). `idle`: it trained no
    step; `idle_before`: nor did the attempt before it; `used`: restarts in the window so far."""
    if not spec.enabled:
        return "not restarted: fault_tolerance.enabled is false"
    if failure in NOT_RESTARTED:
        return NOT_RESTARTED[failure]
    if idle and idle_before:
        return "not restarted: it failed before training a step, as the attempt before it did (a fault in set-up comes back)"
    if used >= spec.max_restarts:
        return f"no restart left ({used} of fault_tolerance.max_restarts={spec.max_restarts} used in {spec.restart_window_minutes:g} min)"
    return None
