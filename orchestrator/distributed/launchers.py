"""The registry of training backends. Each is one small object with the same two methods; the
planner picks it by `distributed.backend` and never branches on the backend itself."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from orchestrator.distributed.deepspeed import DeepSpeedLauncher
from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.recipe.schema import Recipe


class Launcher(Protocol):
    backend: str

    def config_files(self, recipe: Recipe, batch: Batch, load_universal: bool = False) -> dict[str, dict]:
        """Backend config files (name -> JSON content) the ranks read from the run directory;
        `load_universal` when resuming a checkpoint converted for another world size."""

    def node_command(
        self, python: str, topology: Topology, run_dir: Path, node_rank: int | str, master_addr: str, master_port: int | str
    ) -> list[str]:
        """The argv that starts every rank of one node."""


LAUNCHERS: dict[str, Launcher] = {launcher.backend: launcher for launcher in (DeepSpeedLauncher(),)}
