"""The `orch` command line: each command parses, calls one library function, and prints.

Heavy libraries (torch, deepspeed, transformers) are never imported here, so `orch --help`,
`validate` and `plan` answer quickly; only the processes `run` starts import them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.errors import OrchestratorError, ResumeError

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-pretrain.yaml"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a declarative recipe into a real distributed training run (DeepSpeed ZeRO), locally or on Slurm.",
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="Overrides in dotted form, e.g. train.steps=50 distributed.zero_stage=3.", show_default=False)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="One process, a few steps: the smoke test before a big job.")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default runs/<name>).")]


def _fail(exc: OrchestratorError) -> typer.Exit:
    for line in exc.lines():
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
    return typer.Exit(exc.exit_code)


def _load_and_plan(recipe: Path, overrides: list[str] | None, run_dir: Path | None = None, dry_run: bool = False, measure_cpu: bool = True):
    from orchestrator.env import probe
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    return loaded, make_plan(loaded, probe(measure_cpu=measure_cpu), run_dir=run_dir, dry_run=dry_run)


@app.command()
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (schema, cross-field rules, batch arithmetic against this machine); exit 0 or 1."""
    try:
        loaded, _ = _load_and_plan(recipe, overrides, measure_cpu=False)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(f"{recipe}: valid ({loaded.recipe.name}, hash {loaded.hash})")


@app.command()
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Show what a run would do: topology, batch arithmetic, memory per device, estimates, commands, DeepSpeed config."""
    from orchestrator.plan.render import render_plan

    try:
        _, launch_plan = _load_and_plan(recipe, overrides, dry_run=dry_run)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(json.dumps(launch_plan.summary(), indent=2) if as_json else render_plan(launch_plan))


@app.command()
def run(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe YAML file (default: the built-in tiny recipe).", show_default=False)] = None,
    overrides: OverridesArg = None,
    run_dir: RunDirOpt = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its newest verified checkpoint.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Set an existing run directory aside and start over.")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Train locally: all processes of this node, with a live progress bar. Re-running the same
    command continues from the newest verified checkpoint."""
    from orchestrator.checkpoint.resume import check_resume, set_run_aside
    from orchestrator.execute import SubprocessRunner, launch, prepare_run
    from orchestrator.progress import ProgressView

    overrides = list(overrides or [])
    if recipe is None or "=" in recipe:
        overrides = ([recipe] if recipe else []) + overrides
        recipe = str(DEFAULT_RECIPE)
    try:
        if resume is not None and not resume.is_dir():
            raise ResumeError(f"--resume {resume}: no such run directory")
        loaded, launch_plan = _load_and_plan(Path(recipe), overrides, run_dir=resume or run_dir, dry_run=dry_run)
        if fresh and launch_plan.run_dir.exists():
            typer.echo(f"set aside the previous run as {set_run_aside(launch_plan.run_dir)}")
        manifest, safe = check_resume(launch_plan.checkpoint_dir, launch_plan.recipe.model_dump(mode="json"), launch_plan.topology.world_size)
        if resume is not None and manifest is None:
            raise ResumeError(f"--resume {resume}: it has no committed checkpoint to continue from")
        t = launch_plan.topology
        typer.echo(f"{launch_plan.recipe.name}: {t.world_size} process(es) on {t.device}, run directory {launch_plan.run_dir}")
        if manifest:
            typer.echo(f"resuming after step {manifest['step']}" + (f" with changes: {'; '.join(safe)}" if safe else ""))
        run_directory = prepare_run(launch_plan, list(loaded.sources))
        with ProgressView(launch_plan.recipe.train.steps, sys.stderr.isatty()) as view:
            outcome = launch(launch_plan, run_directory, SubprocessRunner(), view.update)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(ProgressView.describe_summary(outcome.summary or {}, outcome.run_dir))
