"""From a recipe file and overrides to a plan: load and validate the recipe, probe this machine (at
the edge, once), plan for it or for the recipe's Slurm nodes. Every command that plans uses this."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.shared.env import EnvSnapshot, probe
from orchestrator.errors import Problem, RecipeError
from orchestrator.plan.calibration import read_calibrations
from orchestrator.plan.memory import GiB, model_state_bytes
from orchestrator.plan.planner import LaunchPlan, make_plan
from orchestrator.recipe.loader import LoadedRecipe, load_recipe
from orchestrator.slurm.spec import SlurmSpec


def load_and_plan(
    recipe: Path, overrides: list[str] | None, *, run_dir: Path | None = None, dry_run: bool = False, for_slurm: bool = False,
    measure_cpu: bool = True, load_universal: bool = False, detach: bool = False,
) -> tuple[LoadedRecipe, LaunchPlan, EnvSnapshot]:
    """`for_slurm` plans for the compute nodes the recipe's `slurm` section describes, not this
    machine; `measure_cpu` times this machine's matmul rate for the time estimate (a tenth of a
    second). What earlier runs measured is read here and handed to the planner. `detach` (`orch run
    --detach`): the node launcher trains on when `orch run` ends; otherwise the CLI's death stops it
    after a checkpoint."""
    loaded = load_recipe(recipe, overrides or [])
    env = probe(measure_cpu=measure_cpu)
    target = _slurm_nodes(env, loaded.recipe.slurm) if for_slurm else env
    plan = make_plan(loaded, target, run_dir=run_dir, dry_run=dry_run, load_universal=load_universal,
                     calibrations=read_calibrations(env.cache_dir))
    return loaded, plan.detached() if detach else plan, env


def _slurm_nodes(env: EnvSnapshot, spec: SlurmSpec) -> EnvSnapshot:
    """The compute nodes as the recipe describes them. Their CPUs are unknown until a job runs on
    them, so a CPU node is taken to have this machine's cores (measured here), as many as
    `slurm.cpus_per_task` asks for; the forecast says so. Named apart from this machine, so no
    local run's measurements stand in for the nodes'."""
    from orchestrator.slurm.submit import cluster_env

    nodes = dataclasses.replace(cluster_env(env, spec), hostname=f"Slurm nodes of {env.hostname}", memory_in_use_bytes=0)
    if not env.cpu_matmul_flops:
        return nodes
    return dataclasses.replace(
        nodes, cpu_matmul_flops=env.cpu_matmul_flops / env.cpu_count * nodes.cpu_count,
        cpu_matmul_source=(f"of {nodes.cpu_count} cores per node, each as fast as this machine's (measured here; "
                           "the nodes' own CPUs are not known before a job runs on them)"),
    )


def validate_recipe(recipe: Path, overrides: list[str] | None) -> tuple[LoadedRecipe, LaunchPlan]:
    """`orch validate`: the recipe loads, plans on this machine, and could run here at all."""
    loaded, plan, _ = load_and_plan(recipe, overrides, measure_cpu=False)
    check_runnable(loaded, plan, recipe, overrides)
    return loaded, plan


def check_runnable(loaded: LoadedRecipe, plan: LaunchPlan, recipe: Path, overrides: list[str] | None) -> None:
    """What `validate` refuses and `plan` refuses too, after showing the plan: a plan that no
    offload or partitioning can fit (a tight one stays a warning of the plan), a sweep's space
    that names keys or values the recipe does not take."""
    problems = cannot_run(loaded, plan)
    if problems:
        raise RecipeError(problems)
    if loaded.recipe.sweep is not None:
        from orchestrator.sweep.space import check_space

        check_space(loaded, recipe, list(overrides or []))


def cannot_run(loaded: LoadedRecipe, plan: LaunchPlan) -> list[Problem]:
    """What the memory estimate proves impossible, not merely tight: the model's training state fully
    partitioned and offloaded is more than all memory of all nodes (devices and host together), or
    what never leaves a device (activations, ZeRO-3's gathered layer) is more than one device holds."""
    memory, topology = plan.memory, plan.topology
    frozen_base = plan.recipe.model.lora is not None  # the adapters' own state is small: counted as none
    state = sum(model_state_bytes(plan.num_params, 0, 3, 1, plan.recipe.train.precision,
                                  trainable_params=0 if frozen_base else None)[:3])
    devices = topology.procs_per_node * memory.capacity_bytes if topology.device != "cpu" else 0
    everything = topology.nodes * (plan.host_memory.capacity_bytes + devices)
    problems = []
    if state > everything:
        problems.append(loaded.problem(
            "model", f"its training state alone is {state / GiB:,.1f} GiB ({plan.num_params:,} parameters), more than all "
            f"{everything / GiB:,.1f} GiB of memory on {topology.nodes} node(s), devices and host together: no offload can fit it; "
            "make the model smaller or add nodes"))
    resident = memory.activations_bytes + memory.gather_buffer_bytes
    if resident > memory.capacity_bytes:
        checkpointing = "" if plan.recipe.train.activation_checkpointing else " or set train.activation_checkpointing: true"
        problems.append(loaded.problem(
            "train.micro_batch_size", f"the activations alone need {resident / GiB:,.1f} GiB per device, more than its "
            f"{memory.capacity_bytes / GiB:,.1f} GiB, and cannot be offloaded: lower train.micro_batch_size or data.seq_len{checkpointing}"))
    return problems
