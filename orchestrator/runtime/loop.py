"""The training loop every backend shares: data, steps, evaluation, metrics, final checkpoint."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml

from orchestrator.data.prepare import PreparedData
from orchestrator.data.stream import PackedSequences, ShardedStream, validation_indices
from orchestrator.model.architectures import Sizes
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir import RunDir


class Engine(Protocol):
    rank: int
    lr: float
    grad_norm: float | None

    def train_step(self, micro_batches: list[np.ndarray]) -> float: ...
    def eval_loss(self, rows: np.ndarray) -> float: ...
    def mean_across_ranks(self, values: list[float]) -> list[float]: ...
    def gather(self, value) -> list: ...
    def save(self, directory: Path, tag: str, client_state: dict) -> None: ...
    def fingerprint(self) -> str: ...


def run_rank(path: Path) -> None:
    run = RunDir(path)
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    _redirect_output(run.rank_log(rank))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = json.loads(run.plan.read_text())
    recipe = Recipe.model_validate(yaml.safe_load(run.recipe.read_text()))
    if world != plan["topology"]["world_size"]:
        raise SystemExit(f"launched with WORLD_SIZE={world} but the plan is for {plan['topology']['world_size']} ranks")
    _seed_everything(recipe.train.seed)
    data = PreparedData.load(Path(json.loads(run.data.read_text())["dir"]))
    sizes = Sizes(**plan["model"]["sizes"])
    engine = _make_engine(recipe, sizes, run, plan, local_rank)
    Trainer(recipe, plan, run, data, engine, world).train()


def _make_engine(recipe: Recipe, sizes: Sizes, run: RunDir, plan: dict, local_rank: int) -> Engine:
    from orchestrator.runtime.deepspeed_engine import DeepSpeedEngine

    engines = {"deepspeed": DeepSpeedEngine}
    return engines[recipe.distributed.backend](recipe, sizes, run.path, plan["topology"]["comm_backend"], local_rank)


class Trainer:
    def __init__(self, recipe: Recipe, plan: dict, run: RunDir, data: PreparedData, engine: Engine, world: int):
        self.recipe, self.plan, self.run, self.engine = recipe, plan, run, engine
        train, batch = recipe.train, plan["batch"]
        seq_len = recipe.data.seq_len
        self.train_data = PackedSequences(data.tokens("train"), seq_len)
        self.val_data = PackedSequences(data.tokens("val"), seq_len)
        self.stream = ShardedStream(
            len(self.train_data), batch["micro_batch_size"], batch["gradient_accumulation_steps"], world, engine.rank, train.seed
        )
        self.val_rows = self.val_data.rows(
            validation_indices(len(self.val_data), train.eval_batches * batch["micro_batch_size"], world, engine.rank)
        )
        self.tokens_per_step = batch["tokens_per_step"]
        estimate = plan["estimate"]
        self.flops_per_step = estimate["flops_per_token"] * self.tokens_per_step
        self.peak_flops = estimate["peak_flops_per_device"] * world
        self.checkpoint_dir = Path(plan["checkpoint_dir"])
        self.is_logger = engine.rank == 0

    def train(self) -> None:
        train = self.recipe.train
        started = time.perf_counter()
        last: dict = {}
        for step in range(1, train.steps + 1):
            lr = self.engine.lr
            tic = time.perf_counter()
            local_loss = self.engine.train_step([self.train_data.rows(i) for i in self.stream.step_indices()])
            (loss,) = self.engine.mean_across_ranks([local_loss])
            step_s = time.perf_counter() - tic
            row = {
                "step": step,
                "loss": loss,
                "lr": lr,
                "grad_norm": self.engine.grad_norm,
                "tokens": step * self.tokens_per_step,
                "tokens_per_s": self.tokens_per_step / step_s,
                "mfu": self.flops_per_step / step_s / self.peak_flops if self.peak_flops else None,
                "step_s": step_s,
                "elapsed_s": time.perf_counter() - started,
            }
            if step % train.eval_interval == 0 or step == train.steps:
                row["val_loss"] = self.evaluate()
            if step % train.log_interval == 0 or step == train.steps or "val_loss" in row:
                self.log(row)
            interval = self.recipe.checkpoint.interval_steps
            if interval and step % interval == 0 and step != train.steps:
                self.save(step)
            last = row
        self.save(train.steps)
        self.finish(last, time.perf_counter() - started)

    def evaluate(self) -> float:
        micro = self.plan["batch"]["micro_batch_size"]
        losses = [self.engine.eval_loss(self.val_rows[i : i + micro]) for i in range(0, len(self.val_rows), micro)]
        (mean,) = self.engine.mean_across_ranks([float(np.mean(losses))])
        return mean

    def save(self, step: int) -> None:
        state = {"step": step, "data": self.stream.state_dict(), "recipe_hash": self.plan["recipe_hash"]}
        self.engine.save(self.checkpoint_dir, f"step-{step:08d}", state)

    def log(self, row: dict) -> None:
        if self.is_logger:
            with self.run.metrics.open("a") as out:
                out.write(json.dumps(row) + "\n")

    def finish(self, last: dict, wall_s: float) -> None:
        fingerprints = self.engine.gather(self.engine.fingerprint())
        if not self.is_logger:
            return
        rows = self.run.metric_rows()
        steady = [r["tokens_per_s"] for r in rows[1:]] or [last["tokens_per_s"]]
        summary = {
            "status": "completed",
            "steps": last["step"],
            "first_loss": rows[0]["loss"] if rows else None,
            "final_loss": last["loss"],
            "final_val_loss": last.get("val_loss"),
            "tokens": last["tokens"],
            "wall_s": wall_s,
            "tokens_per_s": float(np.median(steady)),
            "mfu": float(np.median([r["mfu"] for r in rows[1:] if r["mfu"]] or [0.0])),
            "param_fingerprints": fingerprints,
            "checkpoint": str(self.checkpoint_dir / f"step-{last['step']:08d}"),
        }
        self.run.write_file(self.run.summary.name, json.dumps(summary, indent=2))


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _redirect_output(log: Path) -> None:
    """Each rank's stdout and stderr (Python's and native libraries') go to its own log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
