"""Which attempt of a run this is, counted from the run's history, so that every node launcher of
a job (and of a later requeued job) names an attempt the same way: in `hang` and `attempt_failed`
events and in `hangs/<attempt>/`.

Each attempt that reaches training writes one `start` event; one that failed before it (hung or
crashed in set-up) wrote no `start` but its failure event names it. So the attempt about to begin is
one past the larger of the two counts.
"""

from __future__ import annotations

from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.rows import AttemptFailed, Hang, Start


def next_attempt(run: RunDir) -> int:
    """The number of the attempt about to start (1 for a run's first); read before its ranks start."""
    history = run.history()
    started = sum(isinstance(event, Start) for event in history)
    named = [event.attempt for event in history if isinstance(event, (Hang, AttemptFailed)) and event.attempt is not None]
    return max([started, *named]) + 1
