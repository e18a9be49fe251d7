"""Each rank's peak memory in each phase of a run (issue 32): the `memory_phases` event the ranks'
`launch.memory.PhasePeaks` feed (`orchestrator.watching.phase_memory` shows it beside the plan's
estimate). Part of the union of every kind in `orchestrator.rundir.rows`.

A model larger than one rank must fit in every phase, not only while it is built: a rank's share is
gathered and released in each forward and backward pass, the optimizer steps its partition, an
evaluation gathers again, a checkpoint writes (and a resume reads) every rank's state, and the
closing fingerprint gathers each parameter whole. A phase's peak is the largest over the attempt so
far; rank 0 writes the event at every checkpoint (a killed attempt keeps what it had) and at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from orchestrator.rundir.base_event import BaseEvent

PHASES = ("construction", "setup", "forward_backward", "optimizer_step", "evaluation", "checkpoint_save", "resume", "fingerprint")
"""In the order a run meets them; a run without a resume (or an evaluation) has no figure for it."""

PerRank = dict[str, list[Optional[int]]]
"""Phase -> each rank's peak (index = rank), None where that rank has none."""


@dataclass(frozen=True)
class RankPhaseMemory:
    """One rank's figures, as it sends them to rank 0."""

    host_before_bytes: int
    """Resident before the model was built (torch, the backend and the data already loaded)."""
    host_bytes: dict[str, int]
    host_grown_bytes: dict[str, int]
    device_bytes: dict[str, int] | None
    """On a GPU: torch's allocated device memory; None on a CPU."""
    device_grown_bytes: dict[str, int] | None


class MemoryPhases(BaseEvent):
    """Every rank's peak memory in each phase of this attempt so far, index = rank: resident host
    memory (anonymous, the mapped files taken off) and, on GPUs, torch's allocated device memory.
    `*_grown_bytes`: the most one stretch of the phase grew from what was resident when it began, so
    memory an earlier phase left resident is told from what the phase itself takes."""
    event: Literal["memory_phases"] = "memory_phases"
    step: Optional[int] = None
    host_before_bytes: Optional[list[int]] = None
    host_peak_bytes: Optional[PerRank] = None
    host_grown_bytes: Optional[PerRank] = None
    device_peak_bytes: Optional[PerRank] = None
    device_grown_bytes: Optional[PerRank] = None

    @classmethod
    def of(cls, step: int, ranks: list[RankPhaseMemory]) -> "MemoryPhases":
        def per_rank(figures: list[dict[str, int]]) -> PerRank:
            return {phase: [f.get(phase) for f in figures] for phase in PHASES if any(phase in f for f in figures)}

        on_devices = {}
        if all(r.device_bytes is not None for r in ranks):
            on_devices = {"device_peak_bytes": per_rank([r.device_bytes for r in ranks]),
                          "device_grown_bytes": per_rank([r.device_grown_bytes or {} for r in ranks])}
        return cls(step=step, host_before_bytes=[r.host_before_bytes for r in ranks], host_peak_bytes=per_rank([r.host_bytes for r in ranks]),
                   host_grown_bytes=per_rank([r.host_grown_bytes for r in ranks]), **on_devices)

    def figures(self) -> tuple[str, PerRank, PerRank]:
        """What the plan's per-device estimate is set against, its peaks and its growth within each
        phase: on GPUs the device's; on CPUs the host's peaks less each rank's memory before its model
        was built (the libraries and data, which the estimate leaves out)."""
        if self.device_peak_bytes:
            return "device memory allocated", self.device_peak_bytes, self.device_grown_bytes or {}
        before = self.host_before_bytes or []
        above = {phase: [None if peak is None or rank >= len(before) else peak - before[rank] for rank, peak in enumerate(peaks)]
                 for phase, peaks in (self.host_peak_bytes or {}).items()}
        return "host memory above its start", above, self.host_grown_bytes or {}
