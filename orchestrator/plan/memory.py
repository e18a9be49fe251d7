"""Memory per device for model states at a ZeRO stage, plus activations.

Model states follow the ZeRO paper's accounting (Rajbhandari et al., 2020): with Adam and
mixed precision, 2 bytes of 16-bit parameters, 2 of gradients and 12 of optimizer state (fp32
master copy, momentum, variance) per parameter, stage 1 partitioning the optimizer state over
the data-parallel ranks, stage 2 the gradients too, stage 3 the parameters too. DeepSpeed's own
`estimate_zero{2,3}_model_states_mem_needs` add buffers on top; the unit tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.shared.model.architectures import Sizes
from orchestrator.plan.arithmetic import Batch
from orchestrator.rundir.records import HostMemoryRecord, MemoryRecord

GiB = 2**30

MemoryEstimate = MemoryRecord
"""The estimate is plan.json's `memory_per_device` itself (its total and whether it fits derived, and written)."""
HostMemoryEstimate = HostMemoryRecord
"""The estimate is plan.json's `host_memory_per_node` itself."""


def model_state_bytes(
    num_params: int, largest_layer_params: int, zero_stage: int, world_size: int, precision: str,
    *, offload_optimizer: bool = False, offload_params: bool = False, trainable_params: int | None = None,
) -> tuple[int, int, int, int, int]:
    """(params, grads, optimizer, stage-3 gather buffer, offloaded-to-host) bytes on one device.
    Gradients and optimizer state exist for the trainable parameters only (LoRA: the adapters)."""
    trainable = num_params if trainable_params is None else trainable_params
    mixed = precision != "fp32"
    param_b, grad_b = (2, 2) if mixed else (4, 4)
    # ZeRO-1/2's optimizer keeps its own fp32 copy of the partitioned weights even when they are
    # fp32 already; ZeRO-3 (and plain fp32 Adam) updates fp32 weights in place.
    optim_b = 12 if mixed or zero_stage in (1, 2) else 8
    n = world_size
    params = num_params * param_b / (n if zero_stage >= 3 else 1)
    grads = trainable * grad_b / (n if zero_stage >= 2 else 1)
    optimizer = trainable * optim_b / (n if zero_stage >= 1 else 1)
    gather = largest_layer_params * 4 if zero_stage >= 3 else 0
    host = 0.0
    if offload_optimizer:
        # The optimizer step runs on the host, so the partitioned gradients it reads move there too.
        host += optimizer + (grads if zero_stage >= 2 else 0)
        grads = 0 if zero_stage >= 2 else grads
        optimizer = 0
    if offload_params:
        host += params
        params = 0
    return int(params), int(grads), int(optimizer), int(gather), int(host)


def activation_bytes(sizes: Sizes, batch: Batch, precision: str, checkpointing: bool = False) -> int:
    """Korthikanti et al. (2022): s*b*h*34 bytes per layer in 16-bit, plus the logits (their full
    recomputation: 2*s*b*h per layer, plus the one layer being recomputed). Their extra
    5*a*s/h term is the materialised attention scores, which PyTorch's SDPA kernels (the
    `transformers` default) never store."""
    s, b, h = batch.seq_len, batch.micro_batch_size, sizes.hidden_size
    per_layer = s * b * h * 34
    if precision == "fp32":
        per_layer *= 2
    # Checkpointing keeps each layer's 16-bit input, and the backward pass recomputes one layer's whole set at a time.
    layers = sizes.num_layers * 2 * s * b * h + per_layer if checkpointing else sizes.num_layers * per_layer
    logits = 2 * s * b * sizes.vocab_size * 4
    return int(layers + logits)


@dataclass(frozen=True, kw_only=True)
class MemoryRequest:
    """What one device's memory depends on: the model, the batch, and the recipe's ZeRO, precision,
    offload and checkpointing settings."""

    sizes: Sizes
    num_params: int
    largest_layer: int
    """The biggest single parameter tensor: ZeRO-3 gathers it whole on one device."""
    batch: Batch
    zero_stage: int
    precision: str
    offload_optimizer: bool
    offload_params: bool
    capacity_bytes: int
    trainable_params: int | None = None
    """LoRA's adapters; None when every parameter trains."""
    checkpointing: bool = False


def estimate_memory(request: MemoryRequest) -> MemoryEstimate:
    r = request
    params, grads, optimizer, gather, host = model_state_bytes(
        r.num_params, r.largest_layer, r.zero_stage, r.batch.data_parallel, r.precision,
        offload_optimizer=r.offload_optimizer, offload_params=r.offload_params, trainable_params=r.trainable_params,
    )
    return MemoryEstimate(
        params_bytes=params, grads_bytes=grads, optimizer_bytes=optimizer, gather_buffer_bytes=gather,
        activations_bytes=activation_bytes(r.sizes, r.batch, r.precision, r.checkpointing),
        activations_other_bytes=activation_bytes(r.sizes, r.batch, r.precision, not r.checkpointing),
        host_offload_bytes=host, capacity_bytes=r.capacity_bytes,
    )


def construction_bytes(num_params: int, largest_layer_params: int, precision: str, world_size: int, partitioned: bool) -> int:
    """What one rank holds while its model is built, in the training dtype it is built in: the whole
    model, or its 1/world partition plus the one layer being initialised whole."""
    dtype_bytes = 4 if precision == "fp32" else 2
    if not partitioned:
        return num_params * dtype_bytes
    return (num_params // world_size + largest_layer_params) * dtype_bytes
