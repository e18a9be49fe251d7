"""Throughput and wall-time estimates: measured by earlier runs of the same shape where there are
any, else from model FLOPs, the device's peak and an assumed utilisation, given as a range.

FLOPs per token are counted as torchtitan and Megatron-LM count them for MFU (`TrainingFlops`), so
that an MFU reads the same here as there.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class TrainingFlops:
    """FLOPs per token of a training step, forward and backward, as torchtitan's
    `get_dense_model_nparams_and_flops` and Megatron-LM's `num_floating_point_operations` count them:
    2 per multiply-add, each weight's matmul once forward and twice backward (the input's gradient and
    the weight's), attention's score and value matmuls over the whole sequence.

    Not counted, as there: the input embedding (a table lookup; the output projection is a matmul and
    counts, also when it shares the embedding's weights), attention's recomputation in a fused kernel's
    backward, causal masking's skipped half (the full score matrix counts), norms, softmax and other
    elementwise work. The parameters of norms (and biases) are counted as if matmul weights, as torchtitan
    does: a fraction of a percent. torch's `FlopCounterMode` measures the same within that fraction
    (tests/unit/test_flops_convention.py)."""

    trained_weights: int
    """Matmul weights that train: 6 FLOPs per token each."""
    frozen_weights: int
    """Matmul weights that take no weight gradient (a LoRA fine-tune's base): forward and input
    gradient, 4 FLOPs per token each. Slightly high: where nothing before a frozen matmul trains (the
    first layer's projections that read the frozen embedding) autograd skips its input gradient too,
    2% of a 6-layer model's FLOPs, 1/layers of them."""
    attention: int
    """12 x layers x hidden x sequence: per layer two matmuls forward and four backward, each
    2 x hidden x sequence FLOPs per token."""

    @classmethod
    def of(cls, *, sizes: Sizes, num_params: int, frozen_params: int, lookup_params: int, seq_len: int) -> "TrainingFlops":
        """`lookup_params`: the parameters only looked up (`Architecture.lookup_params`); a frozen base holds them."""
        frozen = max(frozen_params - lookup_params, 0)
        return cls(trained_weights=num_params - lookup_params - frozen, frozen_weights=frozen,
                   attention=12 * sizes.num_layers * sizes.hidden_size * seq_len)

    @property
    def dense(self) -> int:
        return 6 * self.trained_weights + 4 * self.frozen_weights

    @property
    def per_token(self) -> int:
        return self.dense + self.attention


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
    flops: TrainingFlops, batch: Batch, topology: Topology, env: EnvSnapshot, precision: str, steps: int,
    calibration: Calibration | None = None, calibration_key: str = "",
) -> TimeEstimate:
    """`calibration`: what earlier runs of this shape on this hardware measured; without it the
    utilisation is assumed. Either way the wall time comes with the range the utilisation spans."""
    fpt = float(flops.per_token)
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
