"""The DeepSpeed side of a rank: engine set-up, one optimizer step, evaluation, checkpoint.

Implements the `Engine` protocol of `launch.engines`, which is all the training loop knows about
the backend, from the DeepSpeed config the planner wrote (`ds_config.json`, also in the plan).
Its ranks need nothing beyond torch's standard variables, and its nodes serve nothing.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import time
import warnings
from contextlib import nullcontext
from datetime import timedelta
from functools import partial
from pathlib import Path

from launch.engines import process_group_timeout_s, settled
from launch.engines.replica import parameter_digest
from launch.memory import PhasePeaks, return_freed_memory
from launch.rank_state import state_owner
from orchestrator.shared.backend_imports import import_deepspeed, import_muon_uncompiled
from orchestrator.shared.model.architectures import Sizes
from orchestrator.shared.model.build import build_model, import_model_code
from orchestrator.shared.model.inputs import Rows, model_inputs
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.records import PlanRecord
from orchestrator.shared.schedule import lr_multiplier

torch = None
"""Imported when an engine is built: the node launcher imports this module for its node hooks
alone, and should start its ranks without first spending seconds importing torch."""

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""The dtype DeepSpeed trains parameters in, which the model is built in from the start."""

SHARD_OWNER = re.compile(r"zero_pp_rank_(\d+)_")
"""DeepSpeed names each rank's ZeRO shard file by its rank."""


def shard_owner(name: str) -> int:
    match = SHARD_OWNER.search(Path(name).name)
    return int(match.group(1)) if match else state_owner(name)


def rank_env(nodes: int, procs_per_node: int, node_rank: int, local_rank: int, master_addr: str, master_port: int) -> dict[str, str]:
    return {}


def node_services(nodes: int, procs_per_node: int, node_rank: int, master_port: int) -> nullcontext:
    return nullcontext()


def preload(recipe: Recipe, plan: PlanRecord):
    """Everything an engine imports before it builds: called by each engine, and once by a node
    launcher that forks its CPU ranks from itself (`launch.spawn`). Returns the deepspeed module."""
    global torch
    import torch

    deepspeed = import_deepspeed(hide_mlflow=not (recipe.tracking.mlflow.enabled or recipe.tracking.custom))
    import_muon_uncompiled()
    # ZeRO gathers and reduces through torch.distributed's all_gather_into_tensor and
    # reduce_scatter_tensor, which this torch deprecates: their warning was printed again at every
    # call, 40 lines a step in each rank's log under ZeRO-3, about DeepSpeed's code, not the user's.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated", FutureWarning)
    import_model_code(recipe.model, plan.model.sizes)
    if plan.topology.device == "cpu":
        _load_shared_memory_op()
    return deepspeed


def _load_shared_memory_op() -> None:
    """DeepSpeed's shared-memory collectives for CPU ranks, probed and loaded as `init_distributed` would
    (cached there after this): the probe (compiler subprocesses, one per op) and the load took each rank
    0.3 to 1.5 s of a restart on 2 busy cores; a node launcher that forks its ranks pays it once for all
    of them and every restart. CPU ranks only: the probe queries GPUs, which a GPU rank must not do
    before it has chosen its device."""
    from deepspeed.comm.torch import build_shm_op

    with contextlib.redirect_stdout(io.StringIO()):  # its "built successfully": each rank prints it anyway
        build_shm_op()


class Engine:
    def __init__(self, recipe: Recipe, plan: PlanRecord, local_rank: int):
        deepspeed = preload(recipe, plan)
        from deepspeed.accelerator import get_accelerator

        comm_backend = plan.topology.comm_backend
        if comm_backend == "nccl":
            torch.cuda.set_device(local_rank)
        timeout_s = process_group_timeout_s(recipe)
        deepspeed.init_distributed(dist_backend=comm_backend, **({"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}))
        torch.manual_seed(recipe.train.seed)
        config = plan.backend_config
        self.partitioned = recipe.distributed.partitioned_construction
        if recipe.distributed.zero_stage == 3 and plan.topology.device == "cpu":
            return_freed_memory()
        self.memory = PhasePeaks(plan.topology.device)
        model = self._build(recipe, plan.model.sizes, config, get_accelerator().current_device_name())
        self.memory.end("construction")
        schedule = partial(lr_multiplier, recipe.train)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],  # the adapters alone under LoRA
            config=config,
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        )
        self.memory.end("setup")
        self.startup_memory = self.memory.startup()
        self.device = get_accelerator().current_device_name()
        self.dtype = next(self.engine.module.parameters()).dtype  # the compute dtype attention masks must match
        self.zero_stage = recipe.distributed.zero_stage

    def _build(self, recipe: Recipe, sizes: Sizes, config: dict, device: str):
        """The model in DeepSpeed's training dtype. Under ZeRO-3 with `zero3_init`, transformers sees
        the config through `HfDeepSpeedConfig` (kept for the engine's life, as transformers requires)
        and constructs or loads inside `deepspeed.zero.Init`: each rank holds only its partition."""
        if self.partitioned:
            from transformers.integrations import HfDeepSpeedConfig

            self._zero3_config = HfDeepSpeedConfig(copy.deepcopy(config))
        return build_model(recipe.model, sizes, DTYPES[recipe.train.precision], None if self.partitioned else device,
                           recipe.train.activation_checkpointing)

    @property
    def rank(self) -> int:
        return self.engine.global_rank

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    @property
    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def train_step(self, micro_batches: list[Rows], loss_factor: float | None = None) -> float:
        """One optimizer step over the accumulation micro-batches; returns this rank's mean loss.
        `loss_factor` (an injected fault, `launch.faults`) multiplies the loss before its backward pass."""
        total = torch.zeros((), device=self.device)
        self.forward_s = 0.0
        for rows in micro_batches:
            tic = time.perf_counter()
            loss = self.engine(**model_inputs(rows, self.device, self.dtype)).loss
            self.forward_s += settled(loss, tic)
            if loss_factor is not None:
                loss = loss * loss_factor
            self.engine.backward(loss)
            self.memory.end("forward_backward")
            self.engine.step()  # at the accumulation boundary, the optimizer's step; before it, nothing
            self.memory.end("optimizer_step")
            total += loss.detach().float()
        return float(total) / len(micro_batches)

    def eval_loss(self, rows: Rows) -> float:
        self.engine.eval()
        with torch.no_grad():
            loss = float(self.engine(**model_inputs(rows, self.device, self.dtype)).loss)
        self.engine.train()
        return loss

    def mean_across_ranks(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return (tensor / torch.distributed.get_world_size()).tolist()

    def gather(self, value) -> list:
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def any_across_ranks(self, flags: list[bool]) -> list[bool]:
        """Element-wise OR over ranks: one small collective that keeps every rank's decision equal."""
        tensor = torch.tensor([float(f) for f in flags], device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in tensor.tolist()]

    def broadcast(self, value):
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        """Tear the process group down in order: left to interpreter exit, its threads can abort the rank."""
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

    def save_shards(self, base: Path, tag: str) -> None:
        """DeepSpeed's sharded files for every stage; its own `latest` is not written (ours is, after commit)."""
        self.engine.save_checkpoint(str(base), tag=tag, client_state={}, save_latest=False)

    def load_shards(self, root: Path, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")

    shard_owner = staticmethod(shard_owner)

    def fingerprint(self) -> str:
        """A hash of the full parameters, bit for bit: equal on every rank when replicas agree."""
        import deepspeed

        return parameter_digest(self.engine.module.parameters(),
                                lambda param: deepspeed.zero.GatheredParameters([param], enabled=self.zero_stage == 3))
