"""A rank's process, from start to exit: who it is, where its output goes, its energy monitor and
(on rank 0) the dashboard mirror, its backend's engine, and the training loop.

Run by every launcher as `python -m orchestrator.runtime --run-dir DIR`.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from pathlib import Path

import yaml

from orchestrator.data.prepare import PreparedData
from orchestrator.energy.account import start_energy
from orchestrator.model.architectures import Sizes
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir import RunDir
from orchestrator.runtime.loop import Engine, Trainer, seed_everything
from orchestrator.runtime.signals import StopFlag
from orchestrator.tracking.mirror import NullMirror, run_config, start_mirror


def run_rank(path: Path) -> None:
    run = RunDir(path)
    rank, local_rank, world = _identity()
    _redirect_output(run.rank_log(rank))
    print(f"rank {rank}/{world} on host {socket.gethostname()} node {os.environ.get('SLURMD_NODENAME', socket.gethostname())}", flush=True)
    stop = StopFlag().install()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = json.loads(run.plan.read_text())
    recipe = Recipe.model_validate(yaml.safe_load(run.recipe.read_text()))
    if world != plan["topology"]["world_size"]:
        raise SystemExit(f"launched with WORLD_SIZE={world} but the plan is for {plan['topology']['world_size']} ranks")
    monitor, account = start_energy(recipe.energy, plan, run, rank, local_rank)  # before start-up, which costs energy too
    config = run_config(recipe.model_dump(mode="json"), plan)
    mirror = start_mirror(recipe.tracking, run, recipe.name, config) if rank == 0 else NullMirror()
    seed_everything(recipe.train.seed)
    data = PreparedData.load(Path(json.loads(run.data.read_text())["dir"]))
    engine = _make_engine(recipe, Sizes(**plan["model"]["sizes"]), run, plan, local_rank)
    code = Trainer(recipe, plan, run, data, engine, world, stop, monitor, account).train()
    engine.close()
    monitor.close()
    mirror.close()
    # Everything is closed and written; skip interpreter finalisation, where native communication
    # threads can still abort a rank that has finished ("terminate called without an active
    # exception", exit 134) after the process group was destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


IDENTITY_VARIABLES = (("RANK", "LOCAL_RANK", "WORLD_SIZE"), ("HOROVOD_RANK", "HOROVOD_LOCAL_RANK", "HOROVOD_SIZE"))


def _identity() -> tuple[int, int, int]:
    """(rank, local rank, world size) from the standard variables of whichever launcher started this
    rank: torch's (our node launcher), or horovodrun's."""
    for names in IDENTITY_VARIABLES:
        if names[0] in os.environ:
            rank, local, world = (int(os.environ[name]) for name in names)
            return rank, local, world
    return 0, 0, 1


ENGINES = {
    "deepspeed": ("orchestrator.runtime.deepspeed_engine", "DeepSpeedEngine"),
    "horovod": ("orchestrator.runtime.horovod_engine", "HorovodEngine"),
}
"""Imported by name: a rank loads its own backend's library only."""


def _make_engine(recipe: Recipe, sizes: Sizes, run: RunDir, plan: dict, local_rank: int) -> Engine:
    module, name = ENGINES[recipe.distributed.backend]
    engine_class = getattr(importlib.import_module(module), name)
    return engine_class(recipe, sizes, run.path, plan["topology"]["comm_backend"], local_rank)


def _redirect_output(log: Path) -> None:
    """Each rank's stdout and stderr (Python's and native libraries') go to its own log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
