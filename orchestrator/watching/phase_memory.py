"""The table of a run's peak memory per phase and rank (its latest `memory_phases` event) beside the
plan's memory estimate per device: a few lines of `orch status`, a table of `orch report`."""

from __future__ import annotations

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
    """Rows of a table (the header first): a row per rank (the max and min over ranks, beyond
    `max_ranks_shown`), a column per phase recorded, in GiB, and the plan's estimate per device."""
    _, grown = event.growth_bytes()
    phases = [phase for phase in PHASES if phase in grown]
    plan = [] if planned_bytes is None else [_gib(planned_bytes)]
    header = ["GiB", *(LABELS[p] for p in phases), *(["plan"] if plan else [])]
    ranks = max((len(grown[p]) for p in phases), default=0)
    if ranks <= max_ranks_shown:
        rows = [[f"rank {r}", *(_gib(grown[p][r] if r < len(grown[p]) else None) for p in phases), *plan] for r in range(ranks)]
    else:
        def over_ranks(pick) -> list[str]:
            return [_gib(pick([v for v in grown[p] if v is not None], default=None)) for p in phases]
        rows = [["max", *over_ranks(max), *plan], ["min", *over_ranks(min), *plan]]
    return [header, *rows]


def memory_lines(event: MemoryPhases, planned_bytes: int | None) -> list[str]:
    """The table as aligned text, under a line saying what it measures and when."""
    what, _ = event.growth_bytes()
    table = memory_table(event, planned_bytes)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    title = f"peak memory per phase, {what} (step {event.step})" + (", beside the plan's estimate per device" if planned_bytes else "")
    return [title, *("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths)))
                     for row in table)]
