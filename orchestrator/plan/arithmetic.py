"""Topology and batch arithmetic: the numbers users otherwise work out on paper."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.env import EnvSnapshot
from orchestrator.errors import Problem
from orchestrator.recipe.loader import LoadedRecipe


@dataclass(frozen=True)
class Topology:
    nodes: int
    procs_per_node: int
    device: str
    comm_backend: str

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class Batch:
    micro_batch_size: int
    gradient_accumulation_steps: int
    data_parallel: int
    seq_len: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.data_parallel

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len


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
    return Topology(dist.nodes, procs, device, "nccl" if device == "cuda" else "gloo")


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
    return Batch(micro, accumulation, world, loaded.recipe.data.seq_len)


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
