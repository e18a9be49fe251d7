"""Commands that check, plan and start training: validate, plan, prepare, submit, doctor, run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.app import DryRunOpt, OverridesArg, RecipeArg, RunDirOpt, ThenOpt, command, say_submitted
from orchestrator.data import MAX_WORKERS
from orchestrator.errors import EXIT_FAILURE, LaunchError, SlurmError

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-pretrain.yaml"


@command
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (schema, cross-field rules, batch arithmetic against this machine); exit 0 or 1."""
    from orchestrator.plan.load import validate_recipe

    loaded, launch_plan = validate_recipe(recipe, overrides)
    _say_warnings(launch_plan)
    typer.echo(f"{recipe}: valid ({loaded.recipe.name}, hash {launch_plan.recipe_hash})")


@command
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (the content of plan.json).")] = False,
    dry_run: DryRunOpt = False,
    for_slurm: Annotated[bool, typer.Option("--slurm", help="Plan for the Slurm nodes the recipe asks for and print the sbatch script.")] = False,
) -> None:
    """Show what a run would do: topology, batch arithmetic, memory per device, estimates, commands, DeepSpeed config.

    Exits 1 after the plan where `validate` would (a plan nothing can fit, a sweep space the recipe does not take)."""
    from orchestrator.plan.load import check_runnable, load_and_plan
    from orchestrator.plan.render import render_plan
    from orchestrator.rundir.records import plan_json

    from orchestrator.data.prepare import prepared_manifest

    loaded, launch_plan, env = load_and_plan(recipe, overrides, dry_run=dry_run, for_slurm=for_slurm)
    data = launch_plan.recipe.data
    typer.echo(plan_json(launch_plan.record()) if as_json else render_plan(launch_plan, prepared_manifest(data, launch_plan.recipe.train.seed, launch_plan.data_cache_dir)))
    if for_slurm:
        from orchestrator.slurm.submit import render

        typer.echo("\n" + render(launch_plan, env.python), nl=False)
    check_runnable(loaded, launch_plan, recipe, overrides)


@command
def prepare(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, max=MAX_WORKERS, help="Processes (default: the recipe's data.workers); the result is the same for any number.")] = None,
) -> None:
    """Prepare the recipe's data into the cache (curate, train the tokenizer, tokenize into shards); `run` and `submit` do it when it is missing."""
    from orchestrator.data.prepare import prepare_data
    from orchestrator.data.summary import describe_preparation
    from orchestrator.shared.hub import work_offline
    from orchestrator.plan.load import load_and_plan

    _, launch_plan, _ = load_and_plan(recipe, overrides, measure_cpu=False)
    work_offline()
    data = prepare_data(launch_plan.recipe.data, launch_plan.recipe.train.seed, launch_plan.data_cache_dir, workers)
    typer.echo(describe_preparation(data))


@command
def submit(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    run_dir: RunDirOpt = None,
    emit_only: Annotated[bool, typer.Option("--emit-only", help="Print the sbatch script; submit nothing.")] = False,
    skip_doctor: Annotated[bool, typer.Option("--skip-doctor", help="Skip the pre-flight checks.")] = False,
    then: ThenOpt = None,
) -> None:
    """Submit the recipe as a Slurm job (one launcher per node via srun); records the job id in the run directory."""
    from orchestrator.plan.load import load_and_plan
    from orchestrator.slurm.submit import parse_then, render, submit as submit_job

    steps = parse_then(then)
    _check_injected_faults()
    loaded, launch_plan, env = load_and_plan(recipe, overrides, run_dir=run_dir, for_slurm=True)
    _say_warnings(launch_plan)
    if emit_only:
        typer.echo(render(launch_plan, env.python), nl=False)
        return
    if not skip_doctor:
        _preflight(launch_plan)
    jobs = submit_job(launch_plan, env.python, list(loaded.sources), steps)
    say_submitted(jobs, ["prepare"] * (len(jobs) - 1 - len(steps)) + ["train", *steps])
    typer.echo(f"run directory {launch_plan.run_dir}; follow with: orch status {launch_plan.run_dir}")


def _check_injected_faults() -> None:
    """A fault drill's malformed ORCH_INJECT_FAULTS is refused here, in one line, before every rank would fail on it."""
    from orchestrator.shared.faults import VARIABLE, parse

    try:
        parse(os.environ.get(VARIABLE, ""))
    except ValueError as error:
        raise LaunchError(str(error)) from None


def _say_warnings(launch_plan) -> None:
    """The plan's warnings (memory, inline secrets), on stderr: apart from a script or plan on stdout."""
    for warning in launch_plan.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)


def _preflight(launch_plan) -> None:
    from orchestrator.slurm.doctor import render_checks, run_checks

    checks = run_checks(launch_plan)
    if not all(c.ok for c in checks):
        typer.echo(render_checks(checks), err=True)
        raise SlurmError("pre-flight checks failed (see the table above); nothing was submitted")


@command
def doctor(recipe: RecipeArg, overrides: OverridesArg = None, run_dir: RunDirOpt = None) -> None:
    """Pre-flight checks: Slurm controller and partition, writable directories, free space for checkpoints, write speed; inside an allocation also all-reduce bandwidth and GPU health."""
    from orchestrator.plan.load import load_and_plan
    from orchestrator.slurm.doctor import render_checks, run_checks

    _, launch_plan, _ = load_and_plan(recipe, overrides, run_dir=run_dir, for_slurm=True)
    checks = run_checks(launch_plan, allocation={k: v for k, v in os.environ.items() if k.startswith("SLURM_")})
    typer.echo(render_checks(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_FAILURE)


@command
def run(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe YAML file (default: the built-in tiny recipe).", show_default=False)] = None,
    overrides: OverridesArg = None,
    run_dir: RunDirOpt = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", help="Continue the run in this directory from its newest verified checkpoint; or, given a URL (s3://bucket/run), "
                         "from the newest checkpoint committed there, downloaded and verified when the run directory has none.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Set an existing run directory aside and start over.")] = False,
    dry_run: DryRunOpt = False,
    detach: Annotated[bool, typer.Option("--detach", help="Start training and return; it trains on without this command (follow with `orch status -f`).")] = False,
) -> None:
    """Train locally: all processes of this node, with a live progress bar; re-running continues from the newest verified checkpoint.

    One attempt at a time per run directory; if this command dies, the ranks checkpoint and stop (unless --detach)."""
    from orchestrator.starting.execute import SubprocessRunner, launch, prepare_run, start
    from orchestrator.starting.local import LocalRunRequest, plan_local_run
    from orchestrator.watching.progress import ProgressView

    _check_injected_faults()
    overrides = list(overrides or [])
    if recipe is None or "=" in recipe:
        overrides = ([recipe] if recipe else []) + overrides
        recipe = str(DEFAULT_RECIPE)
    url = resume if resume and "://" in resume else None
    request = LocalRunRequest(recipe=Path(recipe), overrides=overrides, run_dir=run_dir, resume=Path(resume) if resume and not url else None,
                              resume_url=url, fresh=fresh, dry_run=dry_run, detach=detach, stop_if_complete=True)
    loaded, launch_plan, attempt = plan_local_run(request, typer.echo)
    with attempt:
        run_directory = prepare_run(launch_plan, list(loaded.sources))
        if detach:
            start(launch_plan, run_directory, SubprocessRunner(attempt))
            pids = " ".join(map(str, attempt.holder.launchers))
            typer.echo(f"training detached (node launcher pid {pids}); follow with: orch status -f {run_directory.path}; "
                       f"stop it after a checkpoint with: kill -TERM {pids}")
            return
        with ProgressView(launch_plan.recipe.train.steps, sys.stderr.isatty()) as view:
            outcome = launch(launch_plan, run_directory, SubprocessRunner(attempt), view.update)
    if outcome.exit_code == 0 and outcome.summary:
        from orchestrator.plan.calibration import record_run

        record_run(outcome.run_dir, launch_plan.cache_dir)  # the next plan of this shape forecasts from it
    typer.echo(ProgressView.describe_summary(outcome.summary, outcome.run_dir))
