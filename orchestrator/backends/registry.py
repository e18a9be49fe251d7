"""The registry of training backends. Each is one small object with the same methods; the planner,
export and elastic resume pick it by name and never branch on the backend themselves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from orchestrator.backends.deepspeed import DeepSpeedBackend
from orchestrator.backends.horovod import HorovodBackend

if TYPE_CHECKING:
    from orchestrator.shared.model.architectures import Sizes
    from orchestrator.plan.arithmetic import Batch, Topology
    from orchestrator.recipe.schema import Recipe


class Backend(Protocol):
    name: str
    """The recipe's `distributed.backend`, the importable library, and the `launch.engines` module."""
    install_hint: str
    """What to tell a user whose machine lacks the backend's library."""

    def config_files(self, recipe: Recipe, batch: Batch, sizes: Sizes, num_params: int, load_universal: bool = False) -> dict[str, dict]:
        """Backend config files (name -> JSON content) the ranks read from the plan, some buffers sized
        to the model; `load_universal` when resuming a checkpoint converted for another world size."""

    def process_env(self, topology: Topology) -> dict[str, str]:
        """Variables every node launcher (and so every rank) needs before the library is imported."""

    def consolidated_state_dict(self, root: Path, tag: str, zero_stage: int) -> tuple[dict, str]:
        """A checkpoint's full fp32 weights (name -> tensor) and a phrase saying where they came from."""

    def universal_checkpoint(self, checkpoint: Path, target: Path) -> Path | None:
        """Make `checkpoint` loadable at another world size; the root to load it from, or None when it
        loads as it is."""


BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (DeepSpeedBackend(), HorovodBackend())}
