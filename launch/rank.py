"""A rank's process, from start to exit: `python -m launch.rank --run-dir DIR`.

Started by the node launcher (`launch.node`) with the standard variables (RANK, LOCAL_RANK,
WORLD_SIZE, ...); everything else it reads from the run directory's typed records. It sets up who
it is, where its output goes, its energy monitor and (on rank 0) the dashboards' mirror, its
backend's engine, and runs the training loop.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from launch import progress, rank_errors
from launch.energy.account import start_energy
from launch.engines import Engine, backend_module
from launch.loop import Trainer, seed_everything
from launch.mirror import NullMirror, start_mirror
from launch.oom import exit_on_oom
from launch.signals import StopFlag
from orchestrator.shared.hub import work_offline
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import PlanRecord, read_data, read_plan, read_recipe
from orchestrator.rundir.rows import EngineBuilt
from orchestrator.recipe.schema import Recipe
from orchestrator.shared.tracking.mirror import run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    with exit_on_oom():
        run_rank(parser.parse_args().run_dir)


def run_rank(path: Path) -> None:
    run = RunDir(path)
    rank, local_rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    with rank_errors.recorded(run, rank):  # when an exception ends it: which rank a crash started on
        _run_rank(run, rank, local_rank, world)


def _run_rank(run: RunDir, rank: int, local_rank: int, world: int) -> None:
    progress.start_reporting(rank)  # first: set-up is timed by the launcher's watchdog too
    _redirect_output(run.rank_log(rank))
    print(f"rank {rank}/{world} on host {socket.gethostname()} node {os.environ.get('SLURMD_NODENAME', socket.gethostname())}", flush=True)
    stop = StopFlag().install()
    work_offline()
    plan, recipe = read_plan(run), read_recipe(run)
    if world != plan.topology.world_size:
        raise SystemExit(f"launched with WORLD_SIZE={world} but the plan is for {plan.topology.world_size} ranks")
    # Before start-up, which costs energy too.
    monitor, account = start_energy(recipe.energy, plan.energy, plan.batch.tokens_per_step, plan.topology.device, run, rank, local_rank)
    config = run_config(recipe.model_dump(mode="json"), plan)
    mirror = start_mirror(recipe.tracking, run, recipe.name, config) if rank == 0 else NullMirror()
    seed_everything(recipe.train.seed)
    data = read_data(run).prepared
    engine = _make_engine(recipe, plan, local_rank)
    _record_startup_memory(engine, run)
    trainer = Trainer(recipe, plan, run, data, engine, world, stop, monitor, account,
                      rebuild=lambda: _make_engine(recipe, plan, local_rank))
    del engine  # the trainer's now: a rollback to the start replaces it
    code = trainer.train()
    trainer.engine.close()
    monitor.close()
    mirror.close()
    # Everything is closed and written; skip interpreter finalisation, where native communication
    # threads can still abort a rank that has finished ("terminate called without an active
    # exception", exit 134) after the process group was destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _make_engine(recipe: Recipe, plan: PlanRecord, local_rank: int) -> Engine:
    """The backend's engine, imported by name: a rank loads its own backend's library only."""
    return backend_module(recipe.distributed.backend).Engine(recipe, plan, local_rank)


def _record_startup_memory(engine: Engine, run: RunDir) -> None:
    """Every rank's measured start-up memory, in one event: what the plan's host-memory figure is checked against."""
    ranks = engine.gather(engine.startup_memory)
    if engine.rank == 0:
        events.append(run.events, EngineBuilt(rss_before_bytes=[m.before_bytes for m in ranks],
                                              construction_peak_bytes=[m.construction_peak_bytes for m in ranks],
                                              peak_rss_bytes=[max(m.construction_peak_bytes, m.setup_peak_bytes) for m in ranks]))


def _redirect_output(log: Path) -> None:
    """Each rank's stdout and stderr (Python's and native libraries') go to its own log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


if __name__ == "__main__":
    main()
