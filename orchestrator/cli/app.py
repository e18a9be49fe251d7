"""The `orch` application and what its commands share: argument types, readable errors, and the
lines that name submitted jobs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from orchestrator.errors import OrchestratorError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a declarative recipe into a real distributed training run (DeepSpeed ZeRO), locally or on Slurm.",
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="Overrides in dotted form, e.g. train.steps=50 distributed.zero_stage=3.", show_default=False)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="One process, a few steps: the smoke test before a big job.")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default runs/<name>).")]
RunDirArg = Annotated[Path, typer.Argument(help="Run directory (as given to or printed by `orch run`).", show_default=False)]
ThenOpt = Annotated[Optional[str], typer.Option("--then", help="Chain `gate` or `gate,release` after training as Slurm jobs (afterok); a failed gate ends the chain.")]
CheckpointOpt = Annotated[Optional[int], typer.Option("--checkpoint", help="The checkpoint's step (default: the newest that verifies).")]


def _readable_errors(command: Callable) -> Callable:
    """The project's own errors become one red line each and their exit code; any other exception is
    a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OrchestratorError as exc:
            for line in exc.lines():
                typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
            raise typer.Exit(exc.exit_code) from None

    return run


def command(function: Callable, group: typer.Typer = app) -> Callable:
    """An `orch` subcommand with readable errors (or, with `group`, one of a command group's, as `orch sweep status`)."""
    return group.command()(_readable_errors(function))


def say_submitted(jobs: list[str], kinds: list[str]) -> None:
    waits = {"prepare": "", "train": "", "sweep": "", "gate": " (after training succeeds)", "release": " (after the gates pass)"}
    waits["train"] = waits["sweep"] = " (after the data is prepared)" if "prepare" in kinds else ""
    for kind, job in zip(kinds, jobs):
        typer.echo(f"submitted {kind} job {job}{waits[kind]}")
