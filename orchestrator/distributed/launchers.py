"""The registry of training backends. Each is one small object with the same two methods; the
planner picks it by `distributed.backend` and never branches on the backend itself."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from orchestrator.distributed.deepspeed import DeepSpeedLauncher
from orchestrator.distributed.horovod import HorovodLauncher
from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.recipe.schema import Recipe


class Launcher(Protocol):
    backend: str
    install_hint: str
    """What to tell a user whose machine lacks the backend's library."""

    def config_files(self, recipe: Recipe, batch: Batch, load_universal: bool = False) -> dict[str, dict]:
        """Backend config files (name -> JSON content) the ranks read from the run directory;
        `load_universal` when resuming a checkpoint converted for another world size."""

    def local_command(self, python: str, topology: Topology, run_dir: Path, port: int) -> list[str]:
        """The argv that starts every rank on this one machine, on a free local `port`. (Across Slurm
        nodes every backend is started by `orchestrator.runtime.node`, one per node.)"""


LAUNCHERS: dict[str, Launcher] = {launcher.backend: launcher for launcher in (DeepSpeedLauncher(), HorovodLauncher())}
