"""The live view of a run: a progress bar on a terminal, a line per logged step elsewhere."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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

    def update(self, rows: list[dict], events: list[dict]) -> None:
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
    def describe_summary(summary: dict, run_dir: Path) -> str:
        if not summary:
            return f"finished; see {run_dir}"
        val = f", val loss {summary['final_val_loss']:.4f}" if summary.get("final_val_loss") is not None else ""
        energy = summary.get("energy")
        bill = (f"\nenergy        {energy['facility_kwh'] * 1000:.4g} Wh, {energy['kgco2e'] * 1000:.4g} gCO2e "
                f"(counter coverage {energy['coverage']:.0%}; `orch energy {run_dir}` for the bill)") if energy else ""
        return (
            f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}{val}, "
            f"{summary['tokens_per_s']:,.0f} tokens/s, MFU {summary['mfu']:.1%}, {wall_time(summary)}\n"
            f"run directory {run_dir}\ncheckpoint    {summary['checkpoint']}{bill}"
        )


def wall_time(summary: dict) -> str:
    """A completed run's time: after a resume, this attempt's apart from the time since the first
    attempt's start (which counts the gaps between attempts: a resume 15 minutes later is not 15
    minutes of training)."""
    attempt_s = summary.get("attempt_wall_s")  # absent from summaries written by earlier versions
    if attempt_s is None or not summary["restarts"]:
        return f"{summary['wall_s']:.0f}s"
    return f"{attempt_s:.0f}s this attempt ({summary['wall_s']:.0f}s since the first of {summary['restarts'] + 1} attempts)"


def describe_event(event: dict) -> str | None:
    """The run-history events a person should see as they happen."""
    kind = event["event"]
    if kind == "resumed":
        recomputed = event.get("recomputed_steps") or 0
        return f"resumed from {event['checkpoint']} (step {event['step']})" + (f"; {recomputed} later steps are recomputed" if recomputed else "")
    if kind == "engine_built":
        growth = max(peak - before for peak, before in zip(event["peak_rss_bytes"], event["rss_before_bytes"]))
        return f"model and engine ready: start-up peaked at {growth / 2**30:.2f} GiB of memory per rank"
    if kind == "started_over":
        return f"no checkpoint to resume from: starting over ({event['recomputed_steps']} logged steps are recomputed)"
    if kind == "checkpoint_set_aside":
        return f"set aside {event['path']}: {event['reason']}"
    if kind == "recipe_changed_on_resume":
        return "recipe changes accepted on resume: " + "; ".join(event["changes"])
    if kind == "preempted":
        return f"signal received: checkpointed step {event['step']}, stopping"
    if kind == "tracking_failed":
        return f"tracking: {event['sink']} failed ({event['error']}); dropped, the run goes on (metrics stay in the run directory)"
    if kind == "energy_budget_warning":
        return f"energy budget: {event['used']:.4g} of {event['budget']:g} {event['unit']} spent"
    if kind == "energy_budget_exceeded":
        return f"energy budget exceeded: {event['used']:.4g} of {event['budget']:g} {event['unit']}; checkpointing and stopping"
    return None


def follow_run(run_dir: Path, interactive: bool, poll_s: float = 1.0) -> None:
    """`orch status --follow`: the same live view `orch run` shows, fed from the run directory, until
    the run reaches a state where nothing more happens without a new start."""
    import time

    from orchestrator.rundir.layout import RunDir
    from orchestrator.status import run_status

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
