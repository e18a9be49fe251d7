"""Carry out a plan: write its files, prepare the data, start the processes, follow them.

Each outside effect goes through one narrow seam (`CommandRunner` for processes), so the same
steps serve local runs now and the Slurm path later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from orchestrator.starting.attempt import Attempt
from orchestrator.data.prepare import prepare_data
from orchestrator.errors import EXIT_REQUEUE, BudgetExceeded, LaunchError, Preempted
from orchestrator.shared.hub import work_offline
from orchestrator.plan.planner import LaunchPlan, ProcessSpec
from orchestrator.starting.provenance import provenance
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.checkpoint_records import RunSummary, read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import write_data, write_provenance
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.metric_rows import MetricRow
from orchestrator.rundir.recovery_events import AttemptFailed
from orchestrator.rundir.rows import StoppedOverBudget
from orchestrator.shared.checkpoint import store

POLL_S = 0.5


class Process(Protocol):
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class CommandRunner(Protocol):
    def start(self, spec: ProcessSpec, log: Path) -> Process: ...
    def signal(self, process: Process, signum: int) -> None: ...


class SubprocessRunner:
    """Starts each process in its own session so that stopping it stops all its ranks.

    Each process gets the attempt's lock (the same open file, so the run directory stays taken while
    it lives) and a stdin pipe whose write end only this CLI holds: an attached node launcher reads
    its end of file as the CLI's death.
    """

    def __init__(self, attempt: Attempt | None = None) -> None:
        self.attempt = attempt

    def start(self, spec: ProcessSpec, log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                spec.argv, cwd=spec.cwd, env={**os.environ, **spec.env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE, start_new_session=True, pass_fds=(self.attempt.fd,) if self.attempt else (),
            )
        if self.attempt:
            self.attempt.add_process(process.pid)
        return process

    def signal(self, process: subprocess.Popen, signum: int) -> None:
        """To the launcher alone: it forwards to its ranks, which must not get the signal twice."""
        if process.poll() is None:
            process.send_signal(signum)


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    exit_code: int
    summary: RunSummary | None


def prepare_run(plan: LaunchPlan, sources: list[Path], with_data: bool = True) -> RunDir:
    """Everything before the first process: files, and (unless a Slurm job prepares them) data and provenance."""
    run = RunDir(plan.run_dir)
    run.logs.mkdir(parents=True, exist_ok=True)
    for relative, content in plan.files().items():
        run.write_file(relative, content)
    if with_data:
        record_data(run, plan.recipe, plan.data_cache_dir, plan.recipe_hash, sources)
    return run


def record_data(run: RunDir, recipe: Recipe, cache_dir: Path, recipe_hash: str, sources: list[Path]) -> None:
    """Prepares the run's data (or finds it prepared) and records where it is, with the run's provenance."""
    work_offline()
    data = prepare_data(recipe.data, recipe.train.seed, cache_dir)
    write_data(run, data)
    write_provenance(run, provenance(recipe_hash, data, sources))


def start(plan: LaunchPlan, run: RunDir, runner: CommandRunner) -> list[Process]:
    """Start the plan's processes; `orch run --detach` stops here."""
    return [runner.start(spec, run.path / spec.log) for spec in plan.processes]


def launch(
    plan: LaunchPlan, run: RunDir, runner: CommandRunner, on_progress: Callable[[list[MetricRow], list[BaseEvent]], None] = lambda rows, events: None,
    stop_when: Callable[[list[MetricRow]], bool] | None = None,
) -> RunOutcome:
    """Start the plan's processes and wait for them, reporting new metric rows and events as they appear.

    Ctrl-C or SIGTERM is forwarded once to the launchers, whose ranks checkpoint and stop with the
    requeue code; a second one makes them stop at once. `stop_when` (given the new metric rows)
    stops the run the same way from here, once: how a sweep prunes a trial.
    """
    seen = (len(run.metric_rows()), len(run.history()))
    processes = start(plan, run, runner)
    first_event = seen[1]
    stopping = False

    def forward(signum, _frame):
        for process in processes:
            runner.signal(process, signum)

    def observe(rows: list[MetricRow], history: list[BaseEvent]) -> None:
        nonlocal stopping
        on_progress(rows, history)
        if stop_when is not None and not stopping and stop_when(rows):
            stopping = True
            forward(signal.SIGTERM, None)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p in processes):
            seen = _report(run, seen, observe)
            time.sleep(POLL_S)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _report(run, seen, observe)
    codes = [p.wait() for p in processes]
    code = next((c for c in codes if c != 0), 0)
    if code == EXIT_REQUEUE:
        raise Preempted(f"stopped on a signal after checkpointing; run the same command again to resume ({run.path})")
    over = [e for e in run.history()[first_event:] if isinstance(e, StoppedOverBudget)]
    if code != 0 and over:
        raise BudgetExceeded(
            f"stopped at step {over[-1].step}: energy budget spent ({over[-1].kwh:.4g} kWh, {over[-1].kgco2e:.4g} kgCO2e)"
            f"{', checkpoint saved' if over[-1].saved else ''}; raise energy.budget_kwh / budget_kgco2e and run again to continue"
        )
    gave_up = [e for e in run.history()[first_event:] if isinstance(e, AttemptFailed) and not e.restarting]
    if code != 0 and gave_up:
        raise LaunchError(describe_gave_up(gave_up[-1], run, plan.checkpoint_dir))
    if code != 0:
        raise LaunchError(f"training failed (exit code {code}){_failure_hint(run)}; logs are in {run.logs}")
    return RunOutcome(run.path, code, read_summary(run))


def describe_gave_up(failed: AttemptFailed, run: RunDir, checkpoint_dir: Path) -> str:
    """The one line `orch run` ends with when the node launcher stopped restarting: the failure class,
    why it did not restart (restarts used), where the evidence is, and the checkpoint a new run resumes from."""
    look = "stacks in" if failed.failure == "hang" else "see"
    evidence = f"; {look} {run.path / failed.evidence}" if failed.evidence else f"; logs are in {run.logs}"
    newest = next(iter(store.committed(checkpoint_dir)), None)
    kept = (f"the newest checkpoint, {newest.name}, is untouched: the same command resumes from it" if newest
            else "no checkpoint had been committed")
    return (f"training failed: {failed.failure} in attempt {failed.attempt} ({failed.detail}); "
            f"{failed.no_restart or 'not restarted'}{evidence}; {kept}")


def _report(run: RunDir, seen: tuple[int, int], on_progress: Callable[[list[MetricRow], list[BaseEvent]], None]) -> tuple[int, int]:
    rows, history = run.metric_rows(), run.history()
    if len(rows) > seen[0] or len(history) > seen[1]:
        on_progress(rows[seen[0]:], history[seen[1]:])
    return len(rows), len(history)


def _failure_hint(run: RunDir) -> str:
    """The last error line a rank printed, so the user sees the cause without opening logs."""
    for log in run.rank_logs() + [run.launcher_log]:
        if not log.exists():
            continue
        lines = [l for l in log.read_text(errors="replace").splitlines() if "Error" in l or "error:" in l]
        if lines:
            return f": {log.name}: {lines[-1].strip()[:300]}"
    return ""
