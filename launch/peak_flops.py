"""MFU's denominator on CPU ranks: measured by the ranks of a node launcher's first attempt, reused by
its in-job restarts.

On GPUs the plan's datasheet peak serves. On CPUs every rank measures the fp32 matmul rate its
threads achieve (half a second of matmuls on every core, at once), since the planner's quick probe
on a busy machine can be far off. A restart re-forked by the same node launcher (`launch.restarts`)
runs on the same cores with the same threads, so the launcher hands its ranks the figure the
previous attempt's `start` event recorded (`reuse_env`, read from the run's own history) and they skip
the measurement: 0.5 to 1 s of a crash's restart on 2 cores. A new `orch run` measures afresh.
The ranks still average what they hold across the world (one small collective), so every rank
uses the same figure whether or not it was handed one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.rows import Start
from orchestrator.shared.env import matmul_rate

MEASURED_ENV = "ORCH_MEASURED_PEAK_FLOPS"
"""The per-device peak (FLOP/s) an earlier attempt of this node launcher measured."""


def reuse_env(history: list[BaseEvent]) -> dict[str, str]:
    """What the launcher adds to the next attempt's ranks: the peak the newest `start` event of `history`
    (this launcher's attempts) recorded; nothing when none started."""
    start = next((e for e in reversed(history) if isinstance(e, Start)), None)
    if start is None or not start.peak_flops_per_device:
        return {}
    return {MEASURED_ENV: repr(start.peak_flops_per_device)}


def peak_flops_per_device(planned: float, device: str, mean_across_ranks: Callable[[list[float]], list[float]]) -> float:
    """The plan's figure on GPUs; on CPUs the one handed down by the launcher, else measured here,
    averaged across the ranks."""
    if device != "cpu":
        return planned
    handed = os.environ.get(MEASURED_ENV)
    (mean,) = mean_across_ranks([float(handed) if handed else measure_matmul_flops()])
    return mean


def measure_matmul_flops(size: int = 1024) -> float:
    """fp32 matmul FLOP/s this process achieves with its thread budget."""
    import torch

    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    return matmul_rate(lambda: a @ a, size, seconds=0.5)
