"""The Horovod backend, plan side: its config, rendered from the recipe, and its checkpoints.

Its node side (the HOROVOD_* variables, the Gloo rendezvous, the engine) is `launch.engines.horovod`;
the same node launcher starts its ranks locally and on every Slurm node, no horovodrun or ssh.
A checkpoint holds the whole model and optimizer once (`horovod/state.pt`), so it loads at any
world size without conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.rundir.horovod_config import AdamWConfig, HorovodConfig
from orchestrator.rundir.layout import HOROVOD_STATE

if TYPE_CHECKING:
    from orchestrator.shared.model.architectures import Sizes
    from orchestrator.plan.arithmetic import Batch, Topology
    from orchestrator.recipe.schema import Recipe

CONFIG_FILE = "horovod_config.json"


def horovod_config(recipe: Recipe, batch: Batch) -> dict:
    """What each rank's `hvd.DistributedOptimizer` and optimizer are built from (`HorovodConfig`, as
    the plan's `backend_files` hold it)."""
    train, dist = recipe.train, recipe.distributed
    optimizer = AdamWConfig(lr=train.optimizer.lr, betas=train.optimizer.betas, eps=train.optimizer.eps,
                            weight_decay=train.optimizer.weight_decay)
    return HorovodConfig(backward_passes_per_step=batch.gradient_accumulation_steps, compression=dist.compression,
                         optimizer=optimizer, gradient_clipping=train.grad_clip, precision=train.precision).model_dump(mode="json")


class HorovodBackend:
    name = "horovod"
    install_hint = "Horovod is not installed: run `make horovod` (builds Horovod 0.28.1 with PyTorch and Gloo; see the README)"

    def config_files(self, recipe: Recipe, batch: Batch, sizes: Sizes, num_params: int, load_universal: bool = False) -> dict[str, dict]:
        return {CONFIG_FILE: horovod_config(recipe, batch)}

    def process_env(self, topology: Topology) -> dict[str, str]:
        return {}

    def consolidated_state_dict(self, root: Path, tag: str, zero_stage: int) -> tuple[dict, str]:
        import torch

        saved = torch.load(root / tag / HOROVOD_STATE, map_location="cpu", weights_only=True)  # state dicts: tensors only
        return {name: tensor.float() for name, tensor in saved["model"].items()}, "Horovod state (whole model, saved by rank 0)"

    def universal_checkpoint(self, checkpoint: Path, target: Path) -> Path | None:
        """Every rank holds the whole state: the checkpoint loads at any world size as it is."""
        return None
