"""From a recipe file and overrides to a plan: load and validate the recipe, probe this machine (at
the edge, once), plan for it or for the recipe's Slurm nodes. Every command that plans uses this."""

from __future__ import annotations

from pathlib import Path

from orchestrator.env import EnvSnapshot, probe
from orchestrator.plan.planner import LaunchPlan, make_plan
from orchestrator.recipe.loader import LoadedRecipe, load_recipe


def load_and_plan(
    recipe: Path, overrides: list[str] | None, run_dir: Path | None = None, dry_run: bool = False, for_slurm: bool = False,
    measure_cpu: bool = True, load_universal: bool = False,
) -> tuple[LoadedRecipe, LaunchPlan, EnvSnapshot]:
    """`for_slurm` plans for the compute nodes the recipe's `slurm` section describes, not this
    machine; `measure_cpu` times this machine's matmul rate for the time estimate (a second)."""
    loaded = load_recipe(recipe, overrides or [])
    env = probe(measure_cpu=measure_cpu and not for_slurm)
    target = env
    if for_slurm:
        from orchestrator.slurm.submit import cluster_env

        target = cluster_env(env, loaded.recipe.slurm)
    return loaded, make_plan(loaded, target, run_dir=run_dir, dry_run=dry_run, load_universal=load_universal), env
