"""The Horovod side of a node and of a rank.

A node: there is no ssh to rely on across Slurm nodes (and no need for horovodrun on one machine),
so the node launcher does what `horovodrun` does internally: it gives each rank the HOROVOD_*
variables, and the first node serves Horovod's Gloo rendezvous (its own `RendezvousHTTPServer`)
on the job's rendezvous port.

A rank: the replicated model, `hvd.DistributedOptimizer`, one optimizer step, evaluation,
checkpoint; the `Engine` protocol of `launch.engines`, from the `horovod_config.json` the planner
wrote (also in the plan). Every rank holds the whole model and optimizer, so rank 0 alone writes a
checkpoint's state and every rank reads it back.
"""

from __future__ import annotations

import math
import os
import socket
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

from launch.engines import process_group_timeout_s, settled
from launch.engines.replica import parameter_digest
from launch.memory import PhasePeaks
from launch.rank_state import state_owner
from orchestrator.shared.model.build import build_model, import_model_code
from orchestrator.shared.model.inputs import Rows, model_inputs
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.horovod_config import HorovodConfig
from orchestrator.rundir.layout import HOROVOD_STATE
from orchestrator.rundir.records import PlanRecord
from orchestrator.shared.schedule import lr_multiplier

torch = None
"""Imported when an engine is built: the node launcher imports this module for its node hooks
alone, and should start its ranks without first spending seconds importing torch."""

GLOO_TIMEOUT_S = 120
"""Gloo's timeout (rendezvous and collectives) where fault tolerance is off; where it is on, the engine
raises it to the process-group timeout, past the watchdog's (`launch.engines.process_group_timeout_s`)."""


@contextmanager
def node_services(nodes: int, procs_per_node: int, node_rank: int, master_port: int):
    """The job's rendezvous, served by the first node's launcher while the ranks run."""
    if node_rank != 0:
        yield
        return
    rendezvous = Rendezvous(nodes, procs_per_node, master_port)
    try:
        yield
    finally:
        rendezvous.close()


def slot_hostname(node_rank: int) -> str:
    """The name a node goes by in the rendezvous. Only a key (Horovod groups ranks by it), so node
    launchers can all derive it without asking one another."""
    return f"node{node_rank}"


def rank_env(nodes: int, procs_per_node: int, node_rank: int, local_rank: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The variables `horovodrun` would give this rank (see horovod.runner.gloo_run)."""
    return {
        "HOROVOD_HOSTNAME": slot_hostname(node_rank),
        "HOROVOD_RANK": str(node_rank * procs_per_node + local_rank),
        "HOROVOD_SIZE": str(nodes * procs_per_node),
        "HOROVOD_LOCAL_RANK": str(local_rank),
        "HOROVOD_LOCAL_SIZE": str(procs_per_node),
        "HOROVOD_CROSS_RANK": str(node_rank),
        "HOROVOD_CROSS_SIZE": str(nodes),
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": master_addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(master_port),
        "HOROVOD_GLOO_IFACE": interface_towards(master_addr),
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(GLOO_TIMEOUT_S),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
    }


def interface_towards(address: str) -> str:
    """The network interface this host reaches `address` through: Gloo's ranks connect to one another
    on it, and it must be one every node can route to."""
    import psutil

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(address), 9))
        local_ip = probe.getsockname()[0]
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local_ip for a in addresses):
            return name
    raise RuntimeError(f"no network interface holds {local_ip}, the address this host uses to reach {address}")


class Rendezvous:
    """Horovod's Gloo rendezvous for the whole job, served by the first node's launcher."""

    def __init__(self, nodes: int, procs_per_node: int, port: int):
        import threading

        from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
        from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

        hosts = ",".join(f"{slot_hostname(n)}:{procs_per_node}" for n in range(nodes))
        self.server = RendezvousHTTPServer(("", port), RendezvousHandler, 0)
        self.server.init(get_host_assignments(parse_hosts(hosts), nodes * procs_per_node))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Engine:
    def __init__(self, recipe: Recipe, plan: PlanRecord, local_rank: int):
        global torch
        import torch

        try:
            import horovod.torch as hvd
        except ImportError as exc:
            raise SystemExit(f"Horovod cannot be imported on this node ({exc}): run `make horovod`") from None

        timeout_s = process_group_timeout_s(recipe)
        if timeout_s:  # Gloo's timeout, for the rendezvous and every collective (read by hvd.init)
            os.environ["HOROVOD_GLOO_TIMEOUT_SECONDS"] = str(math.ceil(timeout_s))
        hvd.init()
        self.hvd = hvd
        config = HorovodConfig.of(plan)
        self.device = torch.device("cuda", hvd.local_rank()) if plan.topology.comm_backend == "nccl" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(recipe.train.seed)
        import_model_code(recipe.model, plan.model.sizes)
        self.memory = PhasePeaks(plan.topology.device)
        # fp32 weights whatever the precision: autocast computes in 16 bits from them.
        self.model = build_model(recipe.model, plan.model.sizes, device=str(self.device),
                                 activation_checkpointing=recipe.train.activation_checkpointing)
        self.memory.end("construction")
        opt = config.optimizer
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=opt.lr, betas=opt.betas, eps=opt.eps,
                                      weight_decay=opt.weight_decay)
        # Identical start on every rank, whatever each one's seed produced.
        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        self.optimizer = hvd.DistributedOptimizer(
            optimizer,
            named_parameters=[(n, p) for n, p in self.model.named_parameters() if p.requires_grad],
            compression=hvd.Compression.fp16 if config.compression == "fp16" else hvd.Compression.none,
            op=hvd.Average,
            backward_passes_per_step=config.backward_passes_per_step,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_multiplier, recipe.train))
        self.memory.end("setup")
        self.startup_memory = self.memory.startup()
        precision = config.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.grad_clip = config.gradient_clipping
        self.dtype = self.autocast_dtype or torch.float32  # the compute dtype attention masks must match
        self.grad_norm: float | None = None

    @property
    def rank(self) -> int:
        return self.hvd.rank()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, micro_batches: list[Rows], loss_factor: float | None = None) -> float:
        """One optimizer step: the micro-batches' gradients accumulate locally (Horovod reduces them once,
        after the last backward pass), are clipped on the reduced values, then applied. `loss_factor` (an
        injected fault, `launch.faults`) multiplies the loss before its backward pass."""
        total = torch.zeros((), device=self.device)
        self.forward_s = 0.0
        for rows in micro_batches:
            tic = time.perf_counter()
            with self._autocast():
                loss = self.model(**model_inputs(rows, self.device, self.dtype)).loss
            self.forward_s += settled(loss, tic)
            if loss_factor is not None:
                loss = loss * loss_factor
            self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.detach().float()
        self.memory.end("forward_backward")
        self.optimizer.synchronize()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or math.inf)
        self.grad_norm = float(norm)
        with self.optimizer.skip_synchronize():
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.scheduler.step()
        self.memory.end("optimizer_step")
        return float(total) / len(micro_batches)

    def eval_loss(self, rows: Rows) -> float:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            loss = float(self.model(**model_inputs(rows, self.device, self.dtype)).loss)
        self.model.train()
        return loss

    def mean_across_ranks(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        return self.hvd.allreduce(tensor, op=self.hvd.Average, name="mean_across_ranks").tolist()

    def any_across_ranks(self, flags: list[bool]) -> list[bool]:
        tensor = torch.tensor([float(f) for f in flags])
        return [bool(v) for v in self.hvd.allreduce(tensor, op=self.hvd.Max, name="any_across_ranks").tolist()]

    def gather(self, value) -> list:
        return self.hvd.allgather_object(value, name="gather")

    def broadcast(self, value):
        # Named: Horovod matches collectives by name, and its default is the type's, which differs
        # between the sender's value and the receivers' placeholder.
        return self.hvd.broadcast_object(value, root_rank=0, name="broadcast")

    def barrier(self) -> None:
        self.hvd.barrier()

    def close(self) -> None:
        self.hvd.barrier()
        self.hvd.shutdown()

    def save_shards(self, base: Path, tag: str) -> None:
        """The whole state, once: every rank holds the same."""
        if self.rank != 0:
            return
        target = base / tag / HOROVOD_STATE
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
            },
            target,
        )

    def load_shards(self, root: Path, tag: str) -> None:
        state = torch.load(root / tag / HOROVOD_STATE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    shard_owner = staticmethod(state_owner)  # the whole state is rank 0's

    def fingerprint(self) -> str:
        return parameter_digest(self.model.parameters())
