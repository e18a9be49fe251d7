"""The learning-rate schedule as a pure function of the step, shared by every backend."""

from __future__ import annotations

import math

from orchestrator.train.spec import TrainSpec


def lr_multiplier(train: TrainSpec, step: int) -> float:
    """Factor on `optimizer.lr` for optimizer step `step` (0-based): linear warmup, then decay."""
    schedule = train.schedule
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.decay == "constant":
        return 1.0
    span = max(1, train.steps - schedule.warmup_steps - 1)
    progress = min(1.0, (step - schedule.warmup_steps) / span)
    floor = schedule.min_lr_ratio
    if schedule.decay == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
