"""`orch run`'s decisions before anything starts: a fresh run, a resume, a resume at another world
size (the checkpoint converted first), or a refusal, ending in the plan to launch."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from orchestrator.checkpoint.resume import check_resume, check_run_dir, set_run_aside
from orchestrator.errors import ResumeError
from orchestrator.plan.load import load_and_plan
from orchestrator.plan.planner import LaunchPlan
from orchestrator.recipe.loader import LoadedRecipe
from orchestrator.rundir.layout import RunDir


def plan_local_run(
    recipe: Path, overrides: list[str], run_dir: Path | None, resume: Path | None, fresh: bool, dry_run: bool,
    say: Callable[[str], None],
) -> tuple[LoadedRecipe, LaunchPlan]:
    """The plan to launch, after setting an old run aside (`fresh`) or checking that its newest
    checkpoint can continue under this recipe; `say` gets a line for each decision."""
    from orchestrator.checkpoint.elastic import prepare_elastic_resume

    if resume is not None and not resume.is_dir():
        raise ResumeError(f"--resume {resume}: no such run directory")
    loaded, plan, _ = load_and_plan(recipe, overrides, run_dir=resume or run_dir, dry_run=dry_run)
    check_run_dir(plan.run_dir, fresh)
    if fresh and plan.run_dir.exists():
        say(f"set aside the previous run as {set_run_aside(plan.run_dir)}")
    world = plan.topology.world_size
    manifest, safe = check_resume(plan.checkpoint_dir, plan.recipe.model_dump(mode="json"), world)
    if resume is not None and manifest is None:
        raise ResumeError(f"--resume {resume}: it has no committed checkpoint to continue from")
    if manifest and manifest["world_size"] != world:
        record = prepare_elastic_resume(RunDir(plan.run_dir), plan.checkpoint_dir, plan.recipe.distributed.backend, world)
        if record.converted:
            say(f"converted {record.tag} (world size {record.from_world_size}) to a universal checkpoint")
        else:
            say(f"resuming {record.tag} (saved at world size {record.from_world_size}) at world size {record.to_world_size}")
        loaded, plan, _ = load_and_plan(recipe, overrides, run_dir=plan.run_dir, dry_run=dry_run, load_universal=True)
    t = plan.topology
    say(f"{plan.recipe.name}: {t.world_size} process(es) on {t.device}, run directory {plan.run_dir}")
    if manifest:
        say(f"resuming after step {manifest['step']}" + (f" with changes: {'; '.join(safe)}" if safe else ""))
    return loaded, plan
