"""Topology and batch arithmetic: the numbers users otherwise work out on paper."""

from __future__ import annotations

from orchestrator.shared.env import EnvSnapshot
from orchestrator.errors import Problem
from orchestrator.recipe.loader import LoadedRecipe
from orchestrator.rundir.records import BatchRecord, TopologyRecord

Topology = TopologyRecord
"""The planner's topology is plan.json's record itself (its world size derived, and written)."""
Batch = BatchRecord
"""The planner's batch is plan.json's record itself (global batch and tokens per step derived, and written)."""


def resolve_topology(loaded: LoadedRecipe, env: EnvSnapshot, problems: list[Problem]) -> Topology:
    dist = loaded.recipe.distributed
    gpus = len(env.gpus)
    if dist.procs_per_node == "auto":
        procs = max(1, gpus)
    else:
        procs = dist.procs_per_node
        if gpus and procs > gpus:
            problems.append(loaded.problem("distributed.procs_per_node", f"{procs} processes per node but this node has {gpus} GPUs: use at most {gpus} (one process per GPU)"))
    device = "cuda" if gpus else "cpu"
    return Topology(nodes=dist.nodes, procs_per_node=procs, device=device, comm_backend="nccl" if device == "cuda" else "gloo")


def resolve_batch(loaded: LoadedRecipe, topology: Topology, problems: list[Problem]) -> Batch:
    train = loaded.recipe.train
    micro, world = train.micro_batch_size, topology.world_size
    accumulation = train.gradient_accumulation_steps or 1
    if train.global_batch_size is not None:
        per_step = micro * world
        if train.global_batch_size % per_step:
            lower = max(per_step, train.global_batch_size // per_step * per_step)
            problems.append(loaded.problem(
                "train.global_batch_size",
                f"{train.global_batch_size} is not divisible by micro_batch_size {micro} x world size {world} = {per_step}; "
                f"use {lower} or {lower + per_step}, or change micro_batch_size",
            ))
        accumulation = max(1, train.global_batch_size // per_step)
    return Batch(micro_batch_size=micro, gradient_accumulation_steps=accumulation, data_parallel=world, seq_len=loaded.recipe.data.seq_len)


def check_precision(loaded: LoadedRecipe, env: EnvSnapshot, topology: Topology, problems: list[Problem]) -> None:
    precision = loaded.recipe.train.precision
    if topology.device == "cpu" and precision == "fp16" and not env.cpu_fp16:
        problems.append(loaded.problem("train.precision", "fp16 needs a GPU or a CPU with AVX512-FP16/AMX-FP16, and this machine has neither: use bf16 or fp32"))
    if topology.device == "cuda" and precision == "bf16":
        old = [gpu.name for gpu in env.gpus if gpu.compute_capability < 8.0]
        if old:
            problems.append(loaded.problem("train.precision", f"bf16 needs compute capability 8.0 or newer, and {old[0]} has less: use fp16 or fp32"))


def check_offload(loaded: LoadedRecipe, topology: Topology, problems: list[Problem]) -> None:
    """ZeRO offload moves state from device memory to host memory; on the CPU device they are the same
    memory, and DeepSpeed's CPU accelerator would copy state to where it already is."""
    if topology.device != "cpu":
        return
    for key in ("offload_optimizer", "offload_params"):
        if getattr(loaded.recipe.distributed, key):
            problems.append(loaded.problem(
                f"distributed.{key}",
                "offload moves state from GPU memory to host memory, and this run is on CPU, where both are the same memory: "
                "remove it here (it is kept for GPU runs, e.g. orch plan --slurm with slurm.gpus_per_node)",
            ))
