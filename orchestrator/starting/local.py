"""`orch run`'s decisions before anything starts: a fresh run, a resume, a resume at another world
size (the checkpoint converted first), nothing at all (the run is complete), or a refusal (another
attempt lives there, or the checkpoint cannot continue), ending in the plan to launch and this
attempt's hold on its run directory."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.starting.attempt import Attempt, hold_attempt
from orchestrator.starting.remote_resume import check_remote_env, fetch_remote_checkpoint, upload_if_newer
from orchestrator.shared.checkpoint.resume import ResumePoint, check_resume, check_run_dir, set_run_aside
from orchestrator.errors import DamagedRun, OrchestratorError, ResumeError
from orchestrator.plan.load import load_and_plan
from orchestrator.plan.planner import LaunchPlan
from orchestrator.recipe.loader import LoadedRecipe
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan


class RunComplete(OrchestratorError):
    """Not a failure: the run directory holds this very recipe's finished run, so nothing is launched
    (starting the ranks would build the engine, about 10 s of billed energy, to train no step). The
    line saying so went through `say`; the command exits 0."""

    exit_code = 0

    def lines(self) -> list[str]:
        return []


@dataclass(frozen=True, kw_only=True)
class LocalRunRequest:
    """What `orch run` (or a sweep's trial) asks of this machine: the recipe and its overrides, where
    to run, and how to treat what is already there."""

    recipe: Path
    overrides: list[str]
    run_dir: Path | None = None
    resume: Path | None = None
    """`--resume DIR`: continue that run; it must hold a committed checkpoint."""
    resume_url: str | None = None
    """`--resume URL`: continue from the newest checkpoint committed there, when the run directory has none."""
    fresh: bool = False
    """Set an existing run aside and start over."""
    dry_run: bool = False
    detach: bool = False
    """The node launcher trains on when the command that started it ends."""
    stop_if_complete: bool = False
    """`orch run`: a complete run raises RunComplete; a sweep relaunches it (see plan_local_run)."""


def plan_local_run(request: LocalRunRequest, say: Callable[[str], None]) -> tuple[LoadedRecipe, LaunchPlan, Attempt]:
    """The plan to launch, after setting an old run aside (`fresh`; a dry run always starts over) or
    checking that its newest checkpoint can continue under this recipe; `say` gets a line for each
    decision. The run directory is held (`Attempt`) before anything in it changes. With
    `stop_if_complete` (`orch run`) a complete run raises RunComplete instead; a sweep relaunches
    it, which records its summary again, since the sweep tells its study what the trial's run says."""
    resume, dry_run = request.resume, request.dry_run
    if resume is not None and not resume.is_dir():
        raise ResumeError(f"--resume {resume}: no such run directory")
    if (resume is not None or request.resume_url) and dry_run:
        raise ResumeError("--dry-run always starts over in a directory of its own; it cannot --resume")
    if request.resume_url and request.fresh:
        raise ResumeError(f"--fresh starts over; it cannot --resume {request.resume_url}")
    loaded, plan, _ = load_and_plan(request.recipe, request.overrides, run_dir=resume or request.run_dir, dry_run=dry_run,
                                    detach=request.detach)
    check_run_dir(plan.run_dir, request.fresh)
    existed = plan.run_dir.exists()
    attempt = hold_attempt(plan.run_dir)
    try:
        if (request.fresh or dry_run) and existed:
            say(_start_over(plan.run_dir, dry_run))
            attempt.close()
            attempt = hold_attempt(plan.run_dir)
        if request.fresh and plan.recipe.checkpoint.local_dir and plan.checkpoint_dir.exists():
            say(f"set aside its node-local checkpoints as {set_run_aside(plan.checkpoint_dir)}")  # else the new run resumes them
        check_remote_env(plan.recipe.checkpoint.remote, os.environ)
        loaded, plan = _plan_resume(request, loaded, plan, say)
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
    request: LocalRunRequest, loaded: LoadedRecipe, plan: LaunchPlan, say: Callable[[str], None],
) -> tuple[LoadedRecipe, LaunchPlan]:
    """Check that the newest verified checkpoint (the run directory's; with none there, the store's newest,
    downloaded) can continue under this recipe, converting it for another world size."""
    from orchestrator.checkpoint.elastic import prepare_elastic_resume

    world = plan.topology.world_size
    point = check_resume(plan.checkpoint_dir, plan.recipe.model_dump(mode="json"), world)
    remote = plan.recipe.checkpoint.remote
    if point.manifest is None and not (request.fresh or request.dry_run) and fetch_remote_checkpoint(
            remote, request.resume_url, plan.checkpoint_dir, say):  # none here: the store's newest
        point = check_resume(plan.checkpoint_dir, plan.recipe.model_dump(mode="json"), world)
    elif point.manifest is not None:  # the store may lack it (its upload was killed)
        upload_if_newer(remote, point.checkpoint, RunDir(plan.run_dir).events, say)
    manifest = point.manifest
    if request.resume is not None and manifest is None:
        raise ResumeError(f"--resume {request.resume}: it has no committed checkpoint to continue from")
    if manifest:
        _check_steps_left(plan, point, request.stop_if_complete, say)
    if manifest and manifest.world_size != world:
        record = prepare_elastic_resume(RunDir(plan.run_dir), point.checkpoint, plan.recipe.distributed.backend, world)
        if record.converted:
            say(f"converted {record.tag} (world size {record.from_world_size}) to a universal checkpoint")
        else:
            say(f"resuming {record.tag} (saved at world size {record.from_world_size}) at world size {record.to_world_size}")
        loaded, plan, _ = load_and_plan(request.recipe, request.overrides, run_dir=plan.run_dir, dry_run=request.dry_run,
                                        load_universal=True, detach=request.detach)
    t = plan.topology
    say(f"{plan.recipe.name}: {t.world_size} process(es) on {t.device}, run directory {plan.run_dir}")
    if manifest:
        say(point.line())
    return loaded, plan


def _check_steps_left(plan: LaunchPlan, point: ResumePoint, stop_if_complete: bool, say: Callable[[str], None]) -> None:
    """A checkpoint past `train.steps` cannot continue (the ranks would save it under an earlier
    step); one at `train.steps` of this very recipe (same hash) whose summary is written is a complete
    run. One at `train.steps` without a summary (stopped right after its last save) still launches:
    the ranks train nothing and write the summary. Raising `train.steps` changes the hash and resumes."""
    step, steps = point.manifest.step, plan.recipe.train.steps
    if step > steps:
        raise ResumeError(f"{point.checkpoint.name} in {plan.run_dir} is past train.steps={steps}: nothing to train; "
                          f"raise train.steps to continue it, or pass --fresh (or another --run-dir) to train {steps} steps anew")
    if not stop_if_complete or step != steps or point.manifest.recipe_hash != plan.recipe_hash:
        return
    if _summary_steps(RunDir(plan.run_dir)) == step:
        say(f"{plan.recipe.name}: complete, {step} of {steps} steps trained ({point.checkpoint}, recipe hash {plan.recipe_hash}); "
            f"nothing to launch. Raise train.steps to train on, or pass --fresh to start over (`orch show {plan.run_dir}`)")
        raise RunComplete(f"{plan.run_dir} is complete")


def _summary_steps(run: RunDir) -> int | None:
    """The steps of the run's completed summary; None without one (a damaged one is rewritten by a launch)."""
    try:
        summary = read_summary(run)
    except DamagedRun:
        return None
    return summary.steps if summary and summary.completed else None
