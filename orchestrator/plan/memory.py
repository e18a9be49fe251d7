"""Memory per device for model states at a ZeRO stage, plus activations.

Model states follow the ZeRO paper's accounting (Rajbhandari et al., 2020): with Adam and
mixed precision, 2 bytes of 16-bit parameters, 2 of gradients and 12 of optimizer state (fp32
master copy, momentum, variance) per parameter, stage 1 partitioning the optimizer state over
the data-parallel ranks, stage 2 the gradients too, stage 3 the parameters too. DeepSpeed's own
`estimate_zero{2,3}_model_states_mem_needs` add buffers on top; the unit tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.model.architectures import Sizes
from orchestrator.plan.arithmetic import Batch

GiB = 2**30
FIT_HEADROOM = 0.9


@dataclass(frozen=True)
class MemoryEstimate:
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    gather_buffer_bytes: int
    activations_bytes: int
    activations_other_bytes: int
    """The activations with `train.activation_checkpointing` set the other way, for the plan to show."""
    host_offload_bytes: int
    capacity_bytes: int

    @property
    def activations_dominate(self) -> bool:
        return max(self.activations_bytes, self.activations_other_bytes) > self.total_bytes - self.activations_bytes

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.gather_buffer_bytes + self.activations_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= FIT_HEADROOM * self.capacity_bytes


def model_state_bytes(
    num_params: int, largest_layer_params: int, zero_stage: int, world_size: int, precision: str,
    offload_optimizer: bool = False, offload_params: bool = False, trainable_params: int | None = None,
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


def estimate_memory(
    sizes: Sizes, num_params: int, largest_layer: int, batch: Batch, zero_stage: int, precision: str,
    offload_optimizer: bool, offload_params: bool, capacity_bytes: int, trainable_params: int | None = None,
    checkpointing: bool = False,
) -> MemoryEstimate:
    params, grads, optimizer, gather, host = model_state_bytes(
        num_params, largest_layer, zero_stage, batch.data_parallel, precision, offload_optimizer, offload_params, trainable_params
    )
    activations = activation_bytes(sizes, batch, precision, checkpointing)
    other = activation_bytes(sizes, batch, precision, not checkpointing)
    return MemoryEstimate(params, grads, optimizer, gather, activations, other, host, capacity_bytes)


@dataclass(frozen=True)
class HostMemoryEstimate:
    """One node's host memory: what each rank holds on the host while its model is constructed, and
    what offload keeps there for the whole run.

    Construction is where a model larger than one rank is lost: without partitioned construction
    every rank builds the whole model before DeepSpeed partitions it (8 ranks x a 7B model in fp32
    is 8 x 26 GiB). On a GPU the model is built on the device, so only the CPU device's
    construction counts here."""

    procs_per_node: int
    construction_bytes: int
    """Per rank: the whole model, or with partitioned construction its partition plus one gathered layer."""
    partitioned: bool
    offload_bytes: int
    """Per rank: optimizer state (and at stage 3 parameters) offloaded to the host."""
    capacity_bytes: int
    """The node's memory."""

    @property
    def per_node_bytes(self) -> int:
        return self.procs_per_node * (self.construction_bytes + self.offload_bytes)

    @property
    def fits(self) -> bool:
        return self.per_node_bytes <= FIT_HEADROOM * self.capacity_bytes


def construction_bytes(num_params: int, largest_layer_params: int, precision: str, world_size: int, partitioned: bool) -> int:
    """What one rank holds while its model is built, in the training dtype it is built in: the whole
    model, or its 1/world partition plus the one layer being initialised whole."""
    dtype_bytes = 4 if precision == "fp32" else 2
    if not partitioned:
        return num_params * dtype_bytes
    return (num_params // world_size + largest_layer_params) * dtype_bytes
