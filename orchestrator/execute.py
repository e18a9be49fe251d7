"""Carry out a plan: write its files, prepare the data, start the processes, follow them.

Each outside effect goes through one narrow seam (`CommandRunner` for processes), so the same
steps serve local runs now and the Slurm path later.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from orchestrator.data.prepare import prepare_data
from orchestrator.errors import LaunchError
from orchestrator.plan.planner import LaunchPlan, ProcessSpec
from orchestrator.provenance import provenance
from orchestrator.rundir import RunDir

POLL_S = 0.5


class Process(Protocol):
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class CommandRunner(Protocol):
    def start(self, spec: ProcessSpec, log: Path) -> Process: ...
    def stop(self, process: Process) -> None: ...


class SubprocessRunner:
    """Starts each process in its own session so that stopping it stops all its ranks."""

    def start(self, spec: ProcessSpec, log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(
                spec.argv, cwd=spec.cwd, env={**os.environ, **spec.env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    exit_code: int
    summary: dict | None


def prepare_run(plan: LaunchPlan, sources: list[Path]) -> RunDir:
    """Everything before the first process: files, data, provenance."""
    run = RunDir(plan.run_dir)
    for relative, content in plan.files().items():
        run.write_file(relative, content)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data, manifest = prepare_data(plan.recipe.data, plan.recipe.train.seed, plan.data_cache_dir)
    run.write_file(run.data.name, json.dumps({"dir": str(data.dir), **{k: v for k, v in manifest.items() if k != "files"}}, indent=2))
    run.write_file(run.provenance.name, json.dumps(provenance(plan.recipe_hash, manifest, sources), indent=2))
    return run


def launch(
    plan: LaunchPlan, run: RunDir, runner: CommandRunner, on_progress: Callable[[list[dict]], None] = lambda rows: None
) -> RunOutcome:
    """Start the plan's processes and wait for them, reporting new metric rows as they appear."""
    processes = [runner.start(spec, run.path / spec.log) for spec in plan.processes]
    seen = 0
    try:
        while any(p.poll() is None for p in processes):
            seen = _report(run, seen, on_progress)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        for process in processes:
            runner.stop(process)
        raise LaunchError(f"interrupted; the run directory is {run.path}") from None
    _report(run, seen, on_progress)
    codes = [p.wait() for p in processes]
    code = next((c for c in codes if c != 0), 0)
    summary = json.loads(run.summary.read_text()) if run.summary.exists() else None
    if code != 0:
        raise LaunchError(f"training failed (exit code {code}){_failure_hint(run)}; logs are in {run.path / 'logs'}")
    return RunOutcome(run.path, code, summary)


def _report(run: RunDir, seen: int, on_progress: Callable[[list[dict]], None]) -> int:
    rows = run.metric_rows()
    if len(rows) > seen:
        on_progress(rows[seen:])
    return len(rows)


def _failure_hint(run: RunDir) -> str:
    """The last error line a rank printed, so the user sees the cause without opening logs."""
    for log in sorted((run.path / "logs").glob("rank-*.log")) + [run.launcher_log]:
        if not log.exists():
            continue
        lines = [l for l in log.read_text(errors="replace").splitlines() if "Error" in l or "error:" in l]
        if lines:
            return f": {log.name}: {lines[-1].strip()[:300]}"
    return ""
