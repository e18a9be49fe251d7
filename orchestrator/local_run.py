"""`orch run`'s decisions before anything starts: a fresh run, a resume, a resume at another world
size (the checkpoint converted first), or a refusal (another attempt lives there, or the checkpoint
cannot continue), ending in the plan to launch and this attempt's hold on its run directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from orchestrator.attempt import Attempt, hold_attempt
from orchestrator.checkpoint.resume import check_resume, check_run_dir, set_run_aside
from orchestrator.errors import ResumeError
from orchestrator.plan.load import load_and_plan
from orchestrator.plan.planner import LaunchPlan
from orchestrator.recipe.loader import LoadedRecipe
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan


def plan_local_run(
    recipe: Path, overrides: list[str], run_dir: Path | None, resume: Path | None, fresh: bool, dry_run: bool,
    say: Callable[[str], None], detach: bool = False,
) -> tuple[LoadedRecipe, LaunchPlan, Attempt]:
    """The plan to launch, after setting an old run aside (`fresh`; a dry run always starts over) or
    checking that its newest checkpoint can continue under this recipe; `say` gets a line for each
    decision. The run directory is held (`Attempt`) before anything in it changes."""
    if resume is not None and not resume.is_dir():
        raise ResumeError(f"--resume {resume}: no such run directory")
    if resume is not None and dry_run:
        raise ResumeError("--dry-run always starts over in a directory of its own; it cannot --resume")
    loaded, plan, _ = load_and_plan(recipe, overrides, run_dir=resume or run_dir, dry_run=dry_run, detach=detach)
    check_run_dir(plan.run_dir, fresh)
    existed = plan.run_dir.exists()
    attempt = hold_attempt(plan.run_dir)
    try:
        if (fresh or dry_run) and existed:
            say(_start_over(plan.run_dir, dry_run))
            attempt.close()
            attempt = hold_attempt(plan.run_dir)
        loaded, plan = _plan_resume(recipe, overrides, loaded, plan, resume, dry_run, detach, say)
    except BaseException:
        attempt.close()
        raise
    return loaded, plan, attempt


def _start_over(run_dir: Path, dry_run: bool) -> str:
    """A previous dry run is removed (it only ever smoke-tests); anything else is set aside, never deleted."""
    if dry_run and _is_dry_run(run_dir):
        shutil.rmtree(run_dir)
        return f"removed the previous dry run in {run_dir}"
    return f"set aside the previous run as {set_run_aside(run_dir)}"


def _is_dry_run(run_dir: Path) -> bool:
    try:
        return read_plan(RunDir(run_dir)).dry_run
    except (OSError, ValueError):
        return False


def _plan_resume(
    recipe: Path, overrides: list[str], loaded: LoadedRecipe, plan: LaunchPlan, resume: Path | None, dry_run: bool, detach: bool,
    say: Callable[[str], None],
) -> tuple[LoadedRecipe, LaunchPlan]:
    """Check that the newest checkpoint can continue under this recipe, converting it for another world size."""
    from orchestrator.checkpoint.elastic import prepare_elastic_resume

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
        loaded, plan, _ = load_and_plan(recipe, overrides, run_dir=plan.run_dir, dry_run=dry_run, load_universal=True, detach=detach)
    t = plan.topology
    say(f"{plan.recipe.name}: {t.world_size} process(es) on {t.device}, run directory {plan.run_dir}")
    if manifest:
        say(f"resuming after step {manifest['step']}" + (f" with changes: {'; '.join(safe)}" if safe else ""))
    return loaded, plan
