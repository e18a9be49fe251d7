"""Commands that look at runs and steer them: status, runs, show, report, logs, cancel, checkpoints, energy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.app import RunDirArg, command
from orchestrator.errors import OrchestratorError


@command
def status(
    run_dir: RunDirArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing progress (bar with ETA, loss, tokens/s) until the run ends; Ctrl-C to stop watching.")] = False,
) -> None:
    """State (from Slurm for submitted runs), current step and loss, restarts."""
    from orchestrator.watching.status import run_status

    if follow:
        from orchestrator.watching.progress import follow_run

        follow_run(run_dir, sys.stderr.isatty())
    typer.echo(run_status(run_dir).line())


@command
def runs(
    root: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
    state: Annotated[Optional[str], typer.Option("--state", help="Only runs in this state (e.g. COMPLETED, RUNNING).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Only runs whose recipe name or run directory name contains this (any case).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Only pretrain or finetune runs.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Only deepspeed or horovod runs.")] = None,
) -> None:
    """A table of the runs under a directory: name, task, backend, nodes, state, step, loss, energy, gates, Slurm job.

    The states of submitted runs come from one scheduler query for all of them; when the scheduler
    cannot be asked, the table says so once and shows the states their run directories record."""
    from orchestrator.watching.status import find_runs, render_runs

    filters = {"state": state, "name": name, "task": task, "backend": backend}
    table = find_runs(root, filters)
    typer.echo(render_runs(table.rows) if table.rows else f"no runs under {root}" + (" match" if any(filters.values()) else ""))
    if table.scheduler_error:
        typer.echo(f"scheduler unreachable ({table.scheduler_error}): Slurm runs show the state their run directories record", err=True)


@command
def show(run_dir: RunDirArg) -> None:
    """One run in detail: state, plan, latest metrics, checkpoints, energy, gates, releases, dashboards."""
    from orchestrator.watching.show import describe_run

    typer.echo(describe_run(run_dir))


@command
def report(
    run_dir: RunDirArg,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default <run>/report.html).")] = None,
) -> None:
    """A self-contained HTML report: loss, validation loss, LR, throughput, energy per node, checkpoint stalls, gates."""
    from orchestrator.watching.page import render_run_page
    from orchestrator.rundir.layout import RunDir

    page = render_run_page(run_dir)
    target = out or RunDir(run_dir).report
    write_output(target, page)
    typer.echo(f"wrote {target}")


def write_output(path: Path, content: str) -> None:
    """A file a command writes for the user (a report, a sweep's best.yaml): whole and never through a
    link planted at its name (`filetree.write_file`); a path that cannot take it is one line."""
    from orchestrator.shared.filetree import write_file

    try:
        write_file(path, content)
    except OSError as exc:
        raise OrchestratorError(f"cannot write {path}: {exc.strerror or exc}") from None


@command
def logs(
    run_dir: RunDirArg,
    rank: Annotated[int, typer.Option("--rank", help="Which rank's log.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing as the log grows.")] = False,
) -> None:
    """Print a rank's log."""
    import time

    from orchestrator.rundir.layout import RunDir

    run = RunDir(run_dir)
    path = run.rank_log(rank)
    if not path.exists():
        raise OrchestratorError(f"no log for rank {rank} in {run.logs}")
    with path.open(errors="replace") as log:
        while True:
            chunk = log.read()
            if chunk:
                typer.echo(chunk, nl=False)
            elif not follow:
                return
            else:
                time.sleep(0.5)


@command
def cancel(run_dir: RunDirArg) -> None:
    """Cancel the run's Slurm job: its ranks checkpoint and stop, and the job is not requeued."""
    from orchestrator.rundir.layout import RunDir
    from orchestrator.slurm.submit import cancel as cancel_job

    typer.echo(f"cancelled job {cancel_job(RunDir(run_dir))}")


@command
def checkpoints(
    run_dir: RunDirArg,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file against its content hash (reads them all).")] = True,
) -> None:
    """List a run's checkpoints, newest first, and whether each verifies.

    Step, tokens, size, world size, ZeRO stage, commit time, which one `latest` points to; then the
    checkpoints set aside, with the reason."""
    from orchestrator.checkpoint.listing import list_checkpoints, render_listing

    typer.echo(render_listing(list_checkpoints(run_dir, verify=verify)))


@command
def energy(
    run_dir: RunDirArg,
    as_json: Annotated[bool, typer.Option("--json", help="The bill as JSON (the content of energy.json).")] = False,
) -> None:
    """A run's energy and carbon bill: per node and device with each figure's method, totals, phases,
    energy lost to failures, and the plan's forecast beside it. Works during a run too."""
    from orchestrator.shared.energy.bill import bill_for
    from orchestrator.energy.table import render_bill
    from orchestrator.rundir.bill import bill_json

    bill = bill_for(run_dir)
    typer.echo(bill_json(bill) if as_json else render_bill(bill))
