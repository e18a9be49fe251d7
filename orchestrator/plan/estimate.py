"""Throughput and wall-time estimates: measured by earlier runs of the same shape where there are
any, else from model FLOPs, the device's peak and an assumed utilisation, given as a range.

FLOPs per token follow the PaLM appendix: 6 x parameters for the dense matmuls (forward and
backward) plus 12 x layers x hidden x sequence for attention. A frozen weight (a LoRA fine-tune's
base) still takes its forward and its input-gradient matmul but no weight gradient: 4 x, not 6 x.
"""

from __future__ import annotations

from orchestrator.shared.env import EnvSnapshot
from orchestrator.shared.model.architectures import Sizes
from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.plan.calibration import Calibration
from orchestrator.rundir.records import EstimateRecord

ASSUMED_MFU = {"cuda": (0.25, 0.40, 0.55), "cpu": (0.20, 0.33, 0.60)}
"""(low, assumed, high) utilisation with no run to calibrate from. GPUs: what dense transformer
training commonly reaches of the datasheet peak. CPUs, of the matmul rate measured at planning:
the default recipe trained at 24-41% of it on a 2-core machine, the lower shares where the machine
was quiet when planned (its small matmuls use a core less fully than the probe's)."""
UNKNOWN_GPU_PEAK_FLOPS = 100e12


def flops_per_token(sizes: Sizes, num_params: int, seq_len: int, frozen_params: int = 0) -> float:
    return 6.0 * num_params - 2.0 * frozen_params + 12.0 * sizes.num_layers * sizes.hidden_size * seq_len


def peak_flops_per_device(env: EnvSnapshot, topology: Topology, precision: str) -> float:
    """bf16/fp16 tensor peak on GPUs (half that for fp32 via TF32); on CPU the measured matmul rate
    shared by the processes of the node."""
    if topology.device == "cuda":
        peak = env.gpus[0].peak_flops or UNKNOWN_GPU_PEAK_FLOPS
        return peak if precision != "fp32" else peak / 2
    return env.cpu_matmul_flops / topology.procs_per_node if env.cpu_matmul_flops else 0.0


def _peak_source(env: EnvSnapshot, topology: Topology) -> str:
    if topology.device == "cuda":
        name = env.gpus[0].name
        return f"{name}'s datasheet peak" if env.gpus[0].peak_flops else f"{UNKNOWN_GPU_PEAK_FLOPS / 1e12:g} TFLOP/s (no datasheet peak known for {name})"
    return f"the fp32 matmul rate {env.cpu_matmul_source}"


TimeEstimate = EstimateRecord
"""The plan's time estimate is written into plan.json as it is (the ranks read its FLOP figures)."""


def estimate_time(
    sizes: Sizes, num_params: int, batch: Batch, topology: Topology, env: EnvSnapshot, precision: str, steps: int,
    frozen_params: int = 0, calibration: Calibration | None = None, calibration_key: str = "",
) -> TimeEstimate:
    """`calibration`: what earlier runs of this shape on this hardware measured; without it the
    utilisation is assumed. Either way the wall time comes with the range the utilisation spans."""
    fpt = flops_per_token(sizes, num_params, batch.seq_len, frozen_params)
    peak = peak_flops_per_device(env, topology, precision)
    tokens = steps * batch.tokens_per_step
    if calibration:
        tokens_per_s, (slowest, fastest), overhead = calibration.tokens_per_s, calibration.tokens_per_s_range, calibration.wall_per_step_time
        mfu = 0.0  # nothing assumed; a share of a peak probed in a tenth of a second would say little
        runs = (f"the median of {calibration.runs} earlier runs ({slowest:,.0f}-{fastest:,.0f} tokens/s)" if calibration.runs > 1
                else "an earlier run")
        schedule = ("; evaluation and checkpoints included, as measured with these settings" if calibration.same_schedule
                    else "; the steps alone (no run had these steps, evaluation and checkpoint settings)")
        basis = f"measured: {runs} of this shape on this hardware (newest {calibration.newest_run_dir}){schedule}"
    else:
        (low, mfu, high), overhead = ASSUMED_MFU[topology.device], 1.0
        at_full_use = peak * topology.world_size / fpt
        tokens_per_s, slowest, fastest = at_full_use * mfu, at_full_use * low, at_full_use * high
        basis = (f"assumed: {mfu:.0%} MFU (likely {low:.0%}-{high:.0%}) of {_peak_source(env, topology)}, "
                 "with no earlier run of this shape on this hardware to calibrate from"
                 if peak else "none: no peak FLOP/s known for this device (the CPU's matmul rate was not measured)")
    wall = tokens / tokens_per_s * overhead if tokens_per_s else 0.0
    wall_range = (tokens / fastest * overhead, tokens / slowest * overhead) if tokens_per_s else None
    return TimeEstimate(flops_per_token=fpt, peak_flops_per_device=peak, assumed_mfu=mfu, tokens_per_s=tokens_per_s, wall_s=wall,
                        device_hours=wall * topology.world_size / 3600, wall_s_range=wall_range, basis=basis,
                        calibration_key=calibration_key)
