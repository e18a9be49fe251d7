"""Throughput and wall-time estimates from model FLOPs and the device's peak.

FLOPs per token follow the PaLM appendix: 6 x parameters for the dense matmuls (forward and
backward) plus 12 x layers x hidden x sequence for attention. A frozen weight (a LoRA fine-tune's
base) still takes its forward and its input-gradient matmul but no weight gradient: 4 x, not 6 x.
Achieved utilisation is an assumption, shown as such; the benchmark measures the real figure.
"""

from __future__ import annotations

from orchestrator.env import EnvSnapshot
from orchestrator.model.architectures import Sizes
from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.rundir.records import EstimateRecord

ASSUMED_MFU = {"cuda": 0.40, "cpu": 0.25}


def flops_per_token(sizes: Sizes, num_params: int, seq_len: int, frozen_params: int = 0) -> float:
    return 6.0 * num_params - 2.0 * frozen_params + 12.0 * sizes.num_layers * sizes.hidden_size * seq_len


def peak_flops_per_device(env: EnvSnapshot, topology: Topology, precision: str) -> float:
    """bf16/fp16 tensor peak on GPUs (half that for fp32 via TF32); on CPU the measured matmul rate
    shared by the processes of the node."""
    if topology.device == "cuda":
        peak = env.gpus[0].peak_flops or 100e12
        return peak if precision != "fp32" else peak / 2
    return env.cpu_matmul_flops / topology.procs_per_node if env.cpu_matmul_flops else 0.0


TimeEstimate = EstimateRecord
"""The plan's time estimate is written into plan.json as it is (the ranks read its FLOP figures)."""


def estimate_time(
    sizes: Sizes, num_params: int, batch: Batch, topology: Topology, env: EnvSnapshot, precision: str, steps: int,
    frozen_params: int = 0,
) -> TimeEstimate:
    fpt = flops_per_token(sizes, num_params, batch.seq_len, frozen_params)
    peak = peak_flops_per_device(env, topology, precision)
    mfu = ASSUMED_MFU[topology.device]
    tokens_per_s = peak * topology.world_size * mfu / fpt if peak else 0.0
    wall = steps * batch.tokens_per_step / tokens_per_s if tokens_per_s else 0.0
    return TimeEstimate(flops_per_token=fpt, peak_flops_per_device=peak, assumed_mfu=mfu, tokens_per_s=tokens_per_s, wall_s=wall,
                        device_hours=wall * topology.world_size / 3600)
