"""The table of a run's peak memory per phase and rank (its latest `memory_phases` event) beside the
plan's memory estimate per device: a few lines of `orch status`, a table of `orch report`."""

from __future__ import annotations

from typing import Callable

from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.memory_phases import PHASES, MemoryPhases
from orchestrator.rundir.records import PlanRecord

LABELS = {"construction": "construction", "setup": "set-up", "forward_backward": "fwd/bwd", "optimizer_step": "optimizer",
          "evaluation": "eval", "checkpoint_save": "save", "resume": "resume", "fingerprint": "fingerprint"}


def latest_memory(history: list[BaseEvent]) -> MemoryPhases | None:
    return next((e for e in reversed(history) if isinstance(e, MemoryPhases)), None)


def planned_bytes(plan: PlanRecord | None) -> int | None:
    """The plan's estimate for one device (parameters, gradients, optimizer state, gather buffers, activations)."""
    return plan.memory_per_device.total_bytes if plan else None


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.3f}"


def memory_table(event: MemoryPhases, planned_bytes: int | None, max_ranks_shown: int = 4) -> list[list[str]]:
    """Rows of a table (the header first), a column per phase recorded, in GiB, and the plan's
    estimate per device beside the peaks (it estimates a peak, not a phase's growth): each rank's
    peak and its growth within the phase; beyond `max_ranks_shown` ranks, the largest and smallest
    peak and the largest growth."""
    _, peaks, grown = event.figures()
    phases = [phase for phase in PHASES if phase in peaks]
    plan = [] if planned_bytes is None else [_gib(planned_bytes)]
    header = ["GiB", *(LABELS[p] for p in phases), *(["plan"] if plan else [])]

    def row(label: str, figures: dict, pick: Callable[[list[int | None]], int | None], beside: list[str]) -> list[str]:
        return [label, *(_gib(pick(figures.get(p, []))) for p in phases), *beside]

    ranks = max((len(peaks[p]) for p in phases), default=0)
    if ranks > max_ranks_shown:
        return [header, row("max", peaks, _over(max), plan), row("min", peaks, _over(min), plan),
                row("  max grown in phase", grown, _over(max), [""] * len(plan))]
    rows = []
    for r in range(ranks):
        def rank_r(values: list[int | None], r: int = r) -> int | None:
            return values[r] if r < len(values) else None

        rows += [row(f"rank {r}", peaks, rank_r, plan), row("  grown in phase", grown, rank_r, [""] * len(plan))]
    return [header, *rows]


def _over(pick: Callable[..., int | None]) -> Callable[[list[int | None]], int | None]:
    """The largest (`max`) or smallest (`min`) over the ranks that have a figure."""
    return lambda values: pick((v for v in values if v is not None), default=None)


def memory_lines(event: MemoryPhases, planned_bytes: int | None) -> list[str]:
    """The table as aligned text, under a line saying what it measures and when."""
    what, _, _ = event.figures()
    table = memory_table(event, planned_bytes)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    title = f"peak memory per phase, {what} (step {event.step})" + (", beside the plan's estimate per device" if planned_bytes else "")
    return [title, *("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
                     for row in table)]
