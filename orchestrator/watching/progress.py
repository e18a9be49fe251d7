"""The live view of a run: a progress bar on a terminal, a line per logged step elsewhere."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from orchestrator.rundir.checkpoint_records import RunSummary
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.metric_rows import MetricRow
from orchestrator.rundir.rows import as_event


class ProgressView:
    def __init__(self, total_steps: int, interactive: bool):
        self.total = total_steps
        # Off a terminal each line is a log line, whole: rich would break any longer than 80 columns.
        self.console = Console(stderr=True, soft_wrap=not interactive)
        self.interactive = interactive
        self.progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not interactive,
        )
        self.task = self.progress.add_task("train", total=total_steps, stats="starting")

    def __enter__(self) -> "ProgressView":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, rows: list[MetricRow], events: list[BaseEvent | dict]) -> None:
        for event in events:
            line = describe_event(event)
            if line:
                self.console.print(line, highlight=False)
        for row in rows:
            stats = f"loss {row['loss']:.4f}  {row['tokens_per_s']:,.0f} tok/s"
            if "val_loss" in row:
                stats += f"  val {row['val_loss']:.4f}"
            self.progress.update(self.task, completed=row["step"], stats=stats)
            if not self.interactive:
                self.console.print(f"step {row['step']}/{self.total}  {stats}", highlight=False)

    @staticmethod
    def describe_summary(summary: RunSummary | None, run_dir: Path) -> str:
        if summary is None or not summary.completed:
            return f"finished; see {run_dir}"
        val = f", val loss {summary.final_val_loss:.4f}" if summary.final_val_loss is not None else ""
        energy = summary.energy
        bill = (f"\nenergy        {energy.facility_kwh * 1000:.4g} Wh, {energy.kgco2e * 1000:.4g} gCO2e "
                f"(counter coverage {energy.coverage:.0%}; `orch energy {run_dir}` for the bill)") if energy and energy.facility_kwh is not None else ""
        spent = f"\ntime          {summary.ledger.describe()}" if summary.ledger else ""  # absent before the ledger
        return (
            f"done: {summary.steps} steps, loss {summary.first_loss:.4f} -> {summary.final_loss:.4f}{val}, "
            f"{summary.tokens_per_s:,.0f} tokens/s, MFU {summary.mfu:.1%}, {wall_time(summary)}\n"
            f"run directory {run_dir}\ncheckpoint    {summary.checkpoint}{bill}{spent}"
        )


def wall_time(summary: RunSummary) -> str:
    """A completed run's time: after a resume, this attempt's apart from the time since the first
    attempt's start (which counts the gaps between attempts: a resume 15 minutes later is not 15
    minutes of training)."""
    attempt_s = summary.attempt_wall_s  # absent from summaries written by earlier versions
    if attempt_s is None or not summary.restarts:
        return f"{summary.wall_s:.0f}s"
    return f"{attempt_s:.0f}s this attempt ({summary.wall_s:.0f}s since the first of {summary.restarts + 1} attempts)"


def describe_event(event: BaseEvent | dict) -> str | None:
    """The line a person should see as the event happens (each kind's `describe()`), None for the
    kinds that are not shown and for a row that is no event. Takes a log row as well."""
    event = as_event(event)
    return event.describe() if event is not None else None


def follow_run(run_dir: Path, interactive: bool, poll_s: float = 1.0) -> None:
    """`orch status --follow`: the same live view `orch run` shows, fed from the run directory, until
    the run reaches a state where nothing more happens without a new start."""
    import time

    from orchestrator.rundir.layout import RunDir
    from orchestrator.watching.status import run_status

    run = RunDir(run_dir)
    status = run_status(run.path)
    seen = (0, 0)
    with ProgressView(status.steps, interactive) as view:
        while True:
            rows, history = run.metric_rows(), run.history()
            view.update(rows[seen[0]:], history[seen[1]:])
            seen = (len(rows), len(history))
            if run_status(run.path).finished:
                return
            time.sleep(poll_s)
