"""The Horovod side of a rank: the replicated model, `hvd.DistributedOptimizer`, one optimizer step,
evaluation, checkpoint.

Implements the `Engine` protocol of `orchestrator.runtime.loop`, as `DeepSpeedEngine` does, from the
`horovod_config.json` the planner wrote. Every rank holds the whole model and optimizer, so rank 0
alone writes a checkpoint's state and every rank reads it back.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from orchestrator.distributed.horovod import CONFIG_FILE, INSTALL_HINT, STATE_DIR, STATE_FILE
from orchestrator.model.architectures import Sizes
from orchestrator.model.build import build_model
from orchestrator.recipe.schema import Recipe
from orchestrator.runtime.batch import Rows, model_inputs
from orchestrator.runtime.replica import parameter_digest
from orchestrator.train.schedule import lr_multiplier

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class HorovodEngine:
    def __init__(self, recipe: Recipe, sizes: Sizes, run_dir: Path, comm_backend: str, local_rank: int):
        try:
            import horovod.torch as hvd
        except ImportError as exc:
            raise SystemExit(f"{INSTALL_HINT} ({exc})") from None

        hvd.init()
        self.hvd = hvd
        config = json.loads((run_dir / CONFIG_FILE).read_text())
        self.device = torch.device("cuda", hvd.local_rank()) if comm_backend == "nccl" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(recipe.train.seed)
        self.model = build_model(recipe.model, sizes).to(self.device)
        opt = config["optimizer"]
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"],
                                      weight_decay=opt["weight_decay"])
        # Identical start on every rank, whatever each one's seed produced.
        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        self.optimizer = hvd.DistributedOptimizer(
            optimizer,
            named_parameters=[(n, p) for n, p in self.model.named_parameters() if p.requires_grad],
            compression=hvd.Compression.fp16 if config["compression"] == "fp16" else hvd.Compression.none,
            op=hvd.Average,
            backward_passes_per_step=config["backward_passes_per_step"],
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_multiplier, recipe.train))
        precision = config["precision"]
        self.autocast_dtype = AUTOCAST.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.grad_clip = config["gradient_clipping"]
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

    def train_step(self, micro_batches: list[Rows]) -> float:
        """One optimizer step: the micro-batches' gradients accumulate locally (Horovod reduces them once,
        after the last backward pass), are clipped on the reduced values, then applied."""
        total = torch.zeros((), device=self.device)
        for rows in micro_batches:
            with self._autocast():
                loss = self.model(**model_inputs(rows, self.device, self.dtype)).loss
            self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.detach().float()
        self.optimizer.synchronize()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or math.inf)
        self.grad_norm = float(norm)
        with self.optimizer.skip_synchronize():
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.scheduler.step()
        return float(total) / len(micro_batches)

    @torch.no_grad()
    def eval_loss(self, rows: Rows) -> float:
        self.model.eval()
        with self._autocast():
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
        directory = base / tag / STATE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
            },
            directory / STATE_FILE,
        )

    def load_shards(self, root: Path, tag: str) -> None:
        state = torch.load(root / tag / STATE_DIR / STATE_FILE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def fingerprint(self) -> str:
        return parameter_digest(self.model.parameters())
