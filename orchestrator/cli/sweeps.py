"""`orch sweep`: start or continue a hyperparameter sweep, and rank, gate or release its trials."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from orchestrator.cli.app import command, say_submitted
from orchestrator.cli.models import gate, release
from orchestrator.cli.watching import write_output
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.sweep.report import TrialRow
    from orchestrator.sweep.study import SweepDir


SWEEP_ACTIONS = ("status", "report", "gate", "release")
SweepThenOpt = Annotated[Optional[str], typer.Option(
    "--then", help="Then `gate` or `gate,release` the best trial: here after the last trial, or with --slurm as jobs that wait "
                   "for the whole array (afterok); a failed gate ends the chain.")]


@command
def sweep(
    target: Annotated[str, typer.Argument(help="A recipe with a `sweep` section; or status, report, gate, release followed by the sweep directory.", show_default=False)],
    rest: Annotated[Optional[list[str]], typer.Argument(help="Overrides of the recipe; or the sweep directory.", show_default=False)] = None,
    local: Annotated[bool, typer.Option("--local", help="Run the trials here, one after another (the default).")] = False,
    on_slurm: Annotated[bool, typer.Option("--slurm", help="Submit the trials as one Slurm array job, sweep.parallel at a time.")] = False,
    sweep_dir: Annotated[Optional[Path], typer.Option("--sweep-dir", help="Sweep directory (default sweeps/<name>).")] = None,
    then: SweepThenOpt = None,
) -> None:
    """Search hyperparameters: one trial (a whole run) per point, pruned early when it falls behind.

    `orch sweep RECIPE [--local|--slurm]` starts or continues the sweep (finished trials are kept,
    unfinished ones resume; a larger sweep.trials adds trials); `orch sweep status|report DIR` ranks
    the trials and writes best.yaml (report: also report.html); `orch sweep gate|release DIR` gates
    or releases the best trial."""
    if target in SWEEP_ACTIONS:
        _sweep_action(target, rest or [])
        return
    from orchestrator.slurm.submit import parse_then

    if local and on_slurm:
        raise OrchestratorError("--local and --slurm: choose one")
    steps = parse_then(then)
    if on_slurm:
        from orchestrator.sweep.start import submit_sweep

        swept, jobs, kinds = submit_sweep(Path(target), list(rest or []), sweep_dir, steps)
        if not jobs:
            typer.echo(f"every trial of {swept.path} has finished; see: orch sweep status {swept.path}")
            return
        say_submitted(jobs, kinds)
        typer.echo(f"sweep directory {swept.path}; follow with: orch sweep status {swept.path}")
        return
    from orchestrator.sweep.start import sweep_locally

    swept = sweep_locally(Path(target), list(rest or []), sweep_dir, typer.echo)
    _sweep_action("report", [str(swept.path)])
    for step in steps:
        _sweep_action(step, [str(swept.path)])


def _sweep_action(action: str, rest: list[str]) -> None:
    from orchestrator.sweep.report import render_status, render_sweep_report, trial_rows
    from orchestrator.sweep.study import SweepDir

    if len(rest) != 1:
        raise OrchestratorError(f"orch sweep {action} takes one sweep directory")
    swept = SweepDir(Path(rest[0]))
    rows, metric, direction = trial_rows(swept)
    if action in ("status", "report"):
        best = _write_best(swept, rows) if any(r.state == "complete" for r in rows) else None
        typer.echo(render_status(rows, metric, direction, swept))
        if best is not None:
            typer.echo(f"best: trial {best.slot}, {metric} {best.value:.4f}; its recipe: {swept.best}")
        if action == "report":
            write_output(swept.report, render_sweep_report(swept))
            typer.echo(f"wrote {swept.report}")
        return
    best = _write_best(swept, rows)
    typer.echo(f"{action} of the best trial {best.slot} ({best.run_dir})")
    if action == "gate":
        gate(best.run_dir)
    else:
        release(best.run_dir)


def _write_best(swept: SweepDir, rows: list[TrialRow]) -> TrialRow:
    """best.yaml, written before anything is printed: a best trial whose recipe is gone is one line."""
    from orchestrator.sweep.report import best_recipe

    best, text = best_recipe(swept, rows)
    write_output(swept.best, text)
    return best
