"""The DeepSpeed backend: its JSON config, rendered from the recipe, and its per-node launch.

One `orchestrator.runtime.node` launcher per node starts the ranks (locally and under Slurm); each rank builds the engine from the JSON written into
the run directory, so the config `orch plan` prints is exactly the one training uses.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.recipe.schema import Recipe
from orchestrator.runtime.node import node_argv

CONFIG_FILE = "ds_config.json"


def deepspeed_config(recipe: Recipe, batch: Batch, load_universal: bool = False) -> dict:
    train, dist = recipe.train, recipe.distributed
    zero: dict = {"stage": dist.zero_stage}
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


class DeepSpeedLauncher:
    backend = "deepspeed"
    install_hint = "DeepSpeed is not installed: run `make setup` (or `pip install -e .`)"

    def config_files(self, recipe: Recipe, batch: Batch, load_universal: bool = False) -> dict[str, dict]:
        return {CONFIG_FILE: deepspeed_config(recipe, batch, load_universal)}

    def local_command(self, python: str, topology: Topology, run_dir: Path, port: int) -> list[str]:
        return node_argv(python, self.backend, 1, topology.procs_per_node, run_dir, "127.0.0.1", port, node_rank=0)
