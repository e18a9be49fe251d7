"""The real `orch` command in a fresh interpreter, as a user runs it, and the ways tests wait for or
kill what it started."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.project import ROOT


def orch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def start_orch(*args: str, faults: str | None = None) -> subprocess.Popen:
    """`orch` in the background, in its own session, for tests that signal or kill it mid-run;
    `faults`: the run's `ORCH_INJECT_FAULTS` (this process's own environment is left as it is)."""
    env = os.environ | ({"ORCH_INJECT_FAULTS": faults} if faults else {})
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, env=env,
    )


def frozen_at_last_save(steps: int) -> str:
    """The faults that freeze every rank (SIGSTOP) as the last checkpoint save of a `steps`-step run
    starts: a test that kills the run once it logged an earlier step cannot find it ended first, however
    loaded the machine (CI once saw a 12-step run finish between its step 10 and the kill)."""
    return f"stop@{steps}:save"


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """Each logged step and its loss, for comparing two runs to the last bit."""
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def wait_for_rows(process: subprocess.Popen, run_dir: Path, count: int, timeout_s: float = 240) -> None:
    """Until the run has logged `count` metric rows, failing early if `process` ended first."""
    import time

    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        assert process.poll() is None, f"the run ended before step {count}"
        assert time.monotonic() < deadline, f"no step {count} within {timeout_s}s"
        time.sleep(0.05)


def kill_run(run_dir: Path) -> None:
    """SIGKILL every process of a run (CLI, node launcher, ranks): a crash at an arbitrary moment."""
    import psutil

    victims = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended by itself meanwhile
            process.kill()
    psutil.wait_procs(victims, timeout=30)
