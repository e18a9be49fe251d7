"""When a step's loss must not be trained on, and where in the data it happened.

A non-finite loss, or one above `fault_tolerance.max_loss_spike` times the median of the recent
losses, sends the training loop back to its newest checkpoint (`Trainer.roll_back`). Every rank
sees the same loss (the mean across ranks) and keeps the same history, so all decide alike
without another collective.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from orchestrator.shared.data.stream import StreamPosition

RECENT_STEPS = 20
"""The losses a spike is measured against: enough for a stable median, few enough to follow the
loss as it falls."""
MIN_RECENT_STEPS = 5
"""No spike is called before this many finite losses: the first steps of an attempt move fast."""


def loss_problem(loss: float, recent: list[float], max_spike: float | None) -> str | None:
    """Why `loss` must not be trained on, or None. `recent`: the latest finite losses, oldest first."""
    if not math.isfinite(loss):
        return "non-finite"
    if max_spike is None or len(recent) < MIN_RECENT_STEPS:
        return None
    median = statistics.median(recent)
    if loss > max_spike * median:
        return f"{loss:.4g} is over {max_spike:g} x {median:.4g}, the median of the last {len(recent)} steps"
    return None


class BadLoss(Exception):
    """A step's loss the loop must not train on; raised before anything of the step is logged."""

    def __init__(self, step: int, loss: float, problem: str, data_position: str):
        super().__init__(f"loss {loss} at step {step} ({problem}), at {data_position}")
        self.step, self.loss, self.problem, self.data_position = step, loss, problem, data_position


class LossGuard:
    """The recent losses of one attempt, step by step, as every rank keeps them."""

    def __init__(self, max_spike: float | None):
        self.max_spike = max_spike
        self.recent: deque[tuple[int, float]] = deque(maxlen=RECENT_STEPS)

    def check(self, step: int, loss: float) -> str | None:
        """Why the step's loss is bad, or None after recording it."""
        problem = loss_problem(loss, [value for _, value in self.recent], self.max_spike)
        if problem is None:
            self.recent.append((step, loss))
        return problem

    def rewind(self, step: int) -> None:
        """Forget the losses after `step`: they are trained again from its checkpoint."""
        while self.recent and self.recent[-1][0] > step:
            self.recent.pop()


def data_position(position: StreamPosition, global_batch_size: int) -> str:
    """The global samples the step just taken read, from the stream's position after it (a mixture's
    samples spread over its sources' epochs, so its epoch is not one number)."""
    first, last = position.consumed_samples - global_batch_size, position.consumed_samples - 1
    where = f"samples {first}-{last} of the training stream"
    return where if position.mixture is not None else f"{where} (epoch {first // position.num_sequences})"
