"""`orch sweep`: start or continue a hyperparameter sweep, and rank, gate or release its trials."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from typer.core import TyperGroup

from orchestrator.cli.app import app, command, say_submitted
from orchestrator.cli.models import gate as gate_run, release as release_run
from orchestrator.cli.watching import write_output
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.sweep.page import TrialRow
    from orchestrator.sweep.study import SweepDir


class RecipeOrCommand(TyperGroup):
    """`orch sweep RECIPE ...` runs the sweep and `orch sweep status DIR` (report, gate, release) looks
    at it: a first argument that names no command is the recipe, handed to `run`, so the documented
    form needs no verb. `orch sweep --help` shows that form's arguments and options above the commands."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: typer.Context, formatter) -> None:
        shown = copy.copy(self)  # for the help alone: the group itself parses no argument of run's
        shown.params = self.commands["run"].params
        super(RecipeOrCommand, shown).format_help(ctx, formatter)


sweep_app = typer.Typer(
    cls=RecipeOrCommand,
    subcommand_metavar="| COMMAND DIR",
    help="Search hyperparameters: one trial (a whole run) per point, pruned early when it falls behind.\n\n"
         "`orch sweep RECIPE [OVERRIDES]... [--local|--slurm]` (the same as `orch sweep run RECIPE ...`) starts or continues "
         "the sweep: finished trials are kept, unfinished ones resume, a larger sweep.trials adds trials. The commands "
         "below rank, gate or release its trials, given the sweep directory.",
)
app.add_typer(sweep_app, name="sweep")
SweepDirArg = Annotated[Path, typer.Argument(help="The sweep directory (as printed by `orch sweep`).", show_default=False)]
SweepThenOpt = Annotated[Optional[str], typer.Option(
    "--then", help="Then `gate` or `gate,release` the best trial: here after the last trial, or with --slurm as jobs that wait "
                   "for the whole array (afterok); a failed gate ends the chain.")]


def _sweep_command(function):
    """An `orch sweep` command with readable errors."""
    return command(function, group=sweep_app)


@_sweep_command
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe with a `sweep` section.", show_default=False)],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Overrides of the recipe.", show_default=False)] = None,
    local: Annotated[bool, typer.Option("--local", help="Run the trials here, one after another (the default).")] = False,
    on_slurm: Annotated[bool, typer.Option("--slurm", help="Submit the trials as one Slurm array job, sweep.parallel at a time.")] = False,
    sweep_dir: Annotated[Optional[Path], typer.Option("--sweep-dir", help="Sweep directory (default sweeps/<name>).")] = None,
    then: SweepThenOpt = None,
) -> None:
    """Start or continue the sweep (also `orch sweep RECIPE ...`): finished trials are kept, unfinished ones resume."""
    from orchestrator.slurm.submit import parse_then

    if local and on_slurm:
        raise OrchestratorError("--local and --slurm: choose one")
    steps = parse_then(then)
    if on_slurm:
        from orchestrator.sweep.start import submit_sweep

        swept, jobs, kinds = submit_sweep(recipe, list(overrides or []), sweep_dir, steps)
        if not jobs:
            typer.echo(f"every trial of {swept.path} has finished; see: orch sweep status {swept.path}")
            return
        say_submitted(jobs, kinds)
        typer.echo(f"sweep directory {swept.path}; follow with: orch sweep status {swept.path}")
        return
    from orchestrator.sweep.start import sweep_locally

    swept = sweep_locally(recipe, list(overrides or []), sweep_dir, typer.echo)
    report(swept.path)
    for step in steps:
        (gate if step == "gate" else release)(swept.path)


@_sweep_command
def status(sweep_dir: SweepDirArg) -> None:
    """Rank the trials by the metric and write the best one's recipe (best.yaml)."""
    _rank(_open(sweep_dir))


@_sweep_command
def report(sweep_dir: SweepDirArg) -> None:
    """What status shows, and report.html: the table, the metric against each parameter, every trial's curve."""
    from orchestrator.sweep.page import render_sweep_page

    swept = _open(sweep_dir)
    _rank(swept)
    write_output(swept.report, render_sweep_page(swept))
    typer.echo(f"wrote {swept.report}")


@_sweep_command
def gate(sweep_dir: SweepDirArg) -> None:
    """Gate the best trial's run (as `orch gate` does)."""
    gate_run(_best_run(_open(sweep_dir), "gate"))


@_sweep_command
def release(sweep_dir: SweepDirArg) -> None:
    """Release the best trial's run (as `orch release` does)."""
    release_run(_best_run(_open(sweep_dir), "release"))


def _open(sweep_dir: Path) -> SweepDir:
    from orchestrator.sweep.study import SweepDir

    return SweepDir(sweep_dir)


def _rank(swept: SweepDir) -> None:
    """The trials, best first, and best.yaml once a trial is complete."""
    from orchestrator.sweep.page import render_status, trial_rows

    rows, metric, direction = trial_rows(swept)
    best = _write_best(swept, rows) if any(r.state == "complete" for r in rows) else None
    typer.echo(render_status(rows, metric, direction, swept))
    if best is not None:
        typer.echo(f"best: trial {best.slot}, {metric} {best.value:.4f}; its recipe: {swept.best}")


def _best_run(swept: SweepDir, action: str) -> Path:
    from orchestrator.sweep.page import trial_rows

    rows, _, _ = trial_rows(swept)
    best = _write_best(swept, rows)
    typer.echo(f"{action} of the best trial {best.slot} ({best.run_dir})")
    return best.run_dir


def _write_best(swept: SweepDir, rows: list[TrialRow]) -> TrialRow:
    """best.yaml, written before anything is printed: a best trial whose recipe is gone is one line."""
    from orchestrator.sweep.page import best_recipe

    best, text = best_recipe(swept, rows)
    write_output(swept.best, text)
    return best
