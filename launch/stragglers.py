"""Stragglers: the rank whose own work makes every step wait for it.

In data-parallel training every rank waits for the slowest at each gradient collective, so a slow
rank (a throttled GPU, a noisy neighbour, a slow file system under its data) shows in everyone's
step time, and the step time alone cannot say which rank it is. Each rank splits its own steps into
data wait (fetching the batch), compute (its forward passes, and the backward's share estimated as
twice the forward, the FLOP convention's 1:2) and the rest, time blocked in collectives and the
optimizer step; every `straggler_window_steps` the ranks exchange the window's medians, and a rank
whose own time (data + compute) exceeds `straggler_ratio` x the median of the others' is named.
NVRx's straggler detection compares ranks the same way (relative performance scores over a window),
timing CUDA kernels; here the host times the phases, which works on CPUs and GPUs alike.
"""

from __future__ import annotations

import statistics

from orchestrator.rundir.recovery_events import Straggler

BACKWARD_PER_FORWARD = 2.0


class StragglerWatch:
    """Fed every step by every rank: `add` gives the window's medians once it is full, which the ranks
    exchange (a collective, at the same step on every rank); `verdict` on what they gathered gives a
    `Straggler` event when the set of stragglers changed."""

    def __init__(self, ratio: float, window: int):
        self.ratio, self.window = ratio, window
        self.samples: list[tuple[float, float, float]] = []
        self.named: list[int] = []

    def add(self, data_s: float, forward_s: float, step_s: float) -> list[float] | None:
        compute = min(max(step_s - data_s, 0.0), (1 + BACKWARD_PER_FORWARD) * forward_s)
        self.samples.append((data_s, compute, max(step_s - data_s - compute, 0.0)))
        if len(self.samples) < self.window:
            return None
        medians = [statistics.median(column) for column in zip(*self.samples)]
        self.samples.clear()
        return medians

    def verdict(self, step: int, per_rank: list[list[float]]) -> Straggler | None:
        stragglers = find_stragglers(per_rank, self.ratio)
        if stragglers == self.named:
            return None
        self.named = stragglers
        return Straggler(step=step, ranks=stragglers, ratio=self.ratio, window_steps=self.window,
                         per_rank=[[round(x, 6) for x in split] for split in per_rank])


def find_stragglers(per_rank: list[list[float]], ratio: float) -> list[int]:
    """The ranks whose own time per step (data wait + compute, the first two of each rank's medians)
    exceeds `ratio` x the median of the other ranks' own times."""
    own = [data + compute for data, compute, *_ in per_rank]
    if len(own) < 2:
        return []
    return [rank for rank, mine in enumerate(own)
            if mine > ratio * statistics.median(own[:rank] + own[rank + 1:])]
