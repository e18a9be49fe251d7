"""The node side of each training backend, found by name in one registry.

A backend's module here provides:
- `Engine`: a class implementing the `Engine` protocol below, built as `Engine(recipe, plan, local_rank)`;
- `rank_env(nodes, procs_per_node, node_rank, local_rank, master_addr, master_port) -> dict`: the
  variables its library expects in each rank beyond the standard RANK/LOCAL_RANK/WORLD_SIZE/MASTER_*;
- `node_services(nodes, procs_per_node, node_rank, master_port)`: a context manager for what one
  node serves while its ranks run (Horovod's rendezvous on the first node; nothing for DeepSpeed).

Modules are imported by name, so a rank (and a node launcher) loads its own backend's library only.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from launch.memory import PhasePeaks, StartupMemory
from orchestrator.shared.model.inputs import Rows

if TYPE_CHECKING:
    from orchestrator.recipe.schema import Recipe

ENGINES = {"deepspeed": "launch.engines.deepspeed", "horovod": "launch.engines.horovod"}


class Engine(Protocol):
    """All the training loop knows about a backend."""

    rank: int
    lr: float
    grad_norm: float | None
    startup_memory: StartupMemory
    memory: PhasePeaks
    """This rank's peak memory per phase: the engine ends construction, set-up, and in `train_step` each
    micro-batch's forward and backward passes and each optimizer step; the training loop the rest."""
    forward_s: float
    """The last `train_step`'s forward passes: this rank's own compute, before any gradient collective
    (the straggler report sets it against its peers')."""

    def train_step(self, micro_batches: list[Rows], loss_factor: float | None = None) -> float: ...
    def eval_loss(self, rows: Rows) -> float: ...
    def mean_across_ranks(self, values: list[float]) -> list[float]: ...
    def any_across_ranks(self, flags: list[bool]) -> list[bool]: ...
    def gather(self, value) -> list: ...
    def broadcast(self, value): ...
    def barrier(self) -> None: ...
    def save_shards(self, base: Path, tag: str) -> None: ...
    def load_shards(self, root: Path, tag: str) -> None: ...
    def shard_owner(self, name: str) -> int:
        """Which rank wrote a checkpoint file (it hashes and reports it); files of no rank are rank 0's."""
    def fingerprint(self) -> str: ...
    def close(self) -> None: ...


def settled(tensor, since: float) -> float:
    """Seconds from `since` until `tensor` is computed: a GPU runs its kernels behind the host, so the
    device is waited for (a sync per forward pass, before the backward's collectives anyway)."""
    if tensor.is_cuda:
        import torch

        torch.cuda.current_stream(tensor.device).synchronize()
    return time.perf_counter() - since


def process_group_timeout_s(recipe: "Recipe") -> float | None:
    """How long a collective waits for a peer before it fails the rank. With fault tolerance on, past
    every timeout of the node launcher's watchdog, which acts first (stacks written, the stopped rank
    named) but finite, so a stopped rank cannot hold its peers forever if its launcher is gone. With it
    off, None: the library's own default."""
    spec = recipe.fault_tolerance
    return spec.process_group_timeout_s if spec.enabled else None


def backend_module(name: str) -> ModuleType:
    return importlib.import_module(ENGINES[name])
