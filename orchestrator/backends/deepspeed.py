"""The DeepSpeed backend, plan side: its JSON config, rendered from the recipe, and its checkpoints
(consolidated by DeepSpeed's `zero_to_fp32`, converted for another world size by `ds_to_universal`).

Its node side is `launch.engines.deepspeed`: each rank builds the engine from the config written
into the run directory, so the config `orch plan` prints is exactly the one training uses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.shared.backend_imports import import_deepspeed
from orchestrator.shared.checkpoint import store
from orchestrator.errors import CheckpointError, ResumeError
from orchestrator.rundir.entry import module_argv

if TYPE_CHECKING:
    from orchestrator.shared.model.architectures import Sizes
    from orchestrator.plan.arithmetic import Batch, Topology
    from orchestrator.recipe.schema import Recipe

CONFIG_FILE = "ds_config.json"
MODULE_STATES = "mp_rank_00_model_states.pt"
BUCKET_FLOOR = 10**7
"""Elements: below this a bucket would cut a small model into thousands of tiny collectives (and an
optimizer step into as many tiny sub-group updates)."""


def zero3_buffers(sizes: Sizes, num_params: int) -> dict:
    """ZeRO-3's buffers sized to the model. Buckets as transformers' Trainer fills DeepSpeed's `auto`
    values (hidden_size^2, 10 x hidden_size for parameters kept whole); at most about two layers of
    gathered parameters live at once, where DeepSpeed's default of 1e9 keeps every parameter of a
    model under a billion gathered from its forward to its backward (a whole model on every rank);
    the optimizer stepped in sub-groups of about two layers, so its temporaries stay that small: torch's
    AdamW makes about three sub-group-sized fp32 temporaries (the flat gradient, sqrt and quotient of
    its variance), 1.1 GiB per rank at a 210M model with sub-groups of 1e8 elements, 0.27 GiB with two
    layers' (issue 32: the step's peak 3.11 -> 2.29 GiB per rank, the same losses)."""
    h2 = sizes.hidden_size ** 2
    two_layers = 2 * num_params // sizes.num_layers
    return {
        "reduce_bucket_size": max(h2, BUCKET_FLOOR),
        "stage3_prefetch_bucket_size": max(int(0.9 * h2), BUCKET_FLOOR),
        "stage3_param_persistence_threshold": 10 * sizes.hidden_size,
        "stage3_max_live_parameters": max(two_layers, BUCKET_FLOOR),
        "stage3_max_reuse_distance": max(two_layers, BUCKET_FLOOR),
        "sub_group_size": max(two_layers, BUCKET_FLOOR),
    }


def deepspeed_config(recipe: Recipe, batch: Batch, sizes: Sizes, num_params: int, load_universal: bool = False) -> dict:
    train, dist = recipe.train, recipe.distributed
    zero: dict = {"stage": dist.zero_stage, **(zero3_buffers(sizes, num_params) if dist.zero_stage == 3 else {})}
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if dist.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    config: dict = {
        "train_batch_size": batch.global_batch_size,
        "train_micro_batch_size_per_gpu": batch.micro_batch_size,
        "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.optimizer.lr,
                "betas": list(train.optimizer.betas),
                "eps": train.optimizer.eps,
                "weight_decay": train.optimizer.weight_decay,
                # torch's AdamW needs no compiled extension, on CPU or GPU.
                "torch_adam": True,
            },
        },
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if dist.offload_optimizer:
        config["zero_force_ds_cpu_optimizer"] = False
    if load_universal:
        # Resuming at another world size: the checkpoint was converted to DeepSpeed's universal format.
        config["checkpoint"] = {"load_universal": True}
    if train.grad_clip is not None:
        config["gradient_clipping"] = train.grad_clip
    if train.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


class DeepSpeedBackend:
    name = "deepspeed"
    install_hint = "DeepSpeed is not installed: run `make setup` (or `pip install -e .`)"

    def config_files(self, recipe: Recipe, batch: Batch, sizes: Sizes, num_params: int, load_universal: bool = False) -> dict[str, dict]:
        return {CONFIG_FILE: deepspeed_config(recipe, batch, sizes, num_params, load_universal)}

    def process_env(self, topology: Topology) -> dict[str, str]:
        """Without CUDA, DeepSpeed must be told before its first import that it runs on CPU."""
        return {"DS_ACCELERATOR": "cpu"} if topology.device == "cpu" else {}

    def consolidated_state_dict(self, root: Path, tag: str, zero_stage: int) -> tuple[dict, str]:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # DeepSpeed's files are pickles and zero_to_fp32 unpickles them whole (weights_only=False):
        # only files that match the checkpoint's manifest, with nothing added beside them, get there.
        store.require_verified(root / tag)
        if zero_stage == 0:
            # zero_to_fp32 needs ZeRO optimizer shards, which stage 0 does not write; DeepSpeed keeps the whole module instead.
            try:
                saved = torch.load(root / tag / MODULE_STATES, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                raise CheckpointError(f"{tag}/{MODULE_STATES} holds more than tensors and plain data, so it is not loaded: "
                                      f"{str(exc).splitlines()[0]}") from None
            return {name: tensor.float() for name, tensor in saved["module"].items()}, "module weights (ZeRO-0, no shards)"
        import_deepspeed()
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # It prints its progress; the CLI's output should be ours alone.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        return state, f"DeepSpeed zero_to_fp32 (ZeRO-{zero_stage} fp32 master weights)"

    def universal_checkpoint(self, checkpoint: Path, target: Path) -> Path | None:
        """ZeRO shards are laid out per rank: rewrite them per parameter (once) into `target`, from
        which the ranks load with `checkpoint.load_universal`; returns the root holding it. The
        conversion gets a manifest of its own: a later resume reuses it only if it still verifies."""
        if not store.verify(target).ok:
            shutil.rmtree(target, ignore_errors=True)
            command = module_argv(sys.executable, "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(checkpoint),
                                  "--output_folder", str(target), "--inject_missing_state")
            result = subprocess.run(command, capture_output=True, text=True, env={"DS_ACCELERATOR": "cpu", **os.environ})
            if result.returncode != 0:
                lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
                raise ResumeError(f"converting {checkpoint.name} to a universal checkpoint failed: {lines[-1]}")
            names = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
            store.write_durably(target / store.MANIFEST, json.dumps({"files": store.describe_files(target, names)}))
        return target.parent
