"""What the benchmark scripts share: starting `orch`, reading a run's files while it runs, the result file.

The scripts run as `python bench/X.py`, so bench/ is on sys.path and they import this as `common`.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the package (and the tests' helpers) import from a checkout without installing
DEFAULT_RECIPE = REPO / "recipes" / "tiny-pretrain.yaml"
# Small corpus and short lr warmup, as the distributed tests use; every step logged.
FAST = ["data.max_bytes=1500000", "train.schedule.warmup_steps=2", "train.log_interval=1"]
POLL_S = 0.05  # metrics and events files: the resolution of every "row appeared" time


def orch_argv(command: str, run_dir: Path, *args: str) -> list[str]:
    """`orch COMMAND ARGS --run-dir RUN_DIR` as a user runs it, with this interpreter."""
    return [sys.executable, "-m", "orchestrator", command, *args, "--run-dir", str(run_dir)]


def run_logged(argv: list[str], log: Path, env: dict | None = None) -> None:
    """Run `argv` from the repository root to completion, output to `log`; a failure raises with the log's tail."""
    with log.open("w") as out:
        code = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed with exit code {code}; last lines of {log}:\n{tail(log)}")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file that another process may be appending to: a torn last line is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def row_after(run_dir: Path, step: int) -> float | None:
    """The time a metrics row past `step` was first seen (within POLL_S), or None."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return time.time() if any(r["step"] > step for r in rows) else None


def events(run_dir: Path, name: str, since: float = 0.0) -> list[dict]:
    """The run's `name` events so far, those at or after `since` (a time.time())."""
    return [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == name and e["time"] >= since]


def first_event(run_dir: Path, name: str, since: float = 0.0) -> dict | None:
    """The first of those events, or None: something to wait_for."""
    return next(iter(events(run_dir, name, since)), None)


def wait_for(found: Callable, ended: Callable[[], str | None], log: Path, what: str, timeout_s: float = 300,
             check_every_s: float = POLL_S):
    """Poll `found()` every POLL_S until it returns something (a value, or the time the condition was first seen).

    `ended()`, asked every `check_every_s`, says why nothing more will come (the process or job is over) or None;
    it is asked before `found()`, so what just ended has had its last chance. Failures end with the tail of `log`.
    """
    deadline, next_check = time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline:
        over = None
        if time.monotonic() >= next_check:
            over, next_check = ended(), time.monotonic() + check_every_s
        value = found()
        if value:
            return value
        if over:
            raise RuntimeError(f"{over} and still no {what}; last lines of {log}:\n{tail(log)}")
        time.sleep(POLL_S)
    raise TimeoutError(f"no {what} after {timeout_s:.0f}s; last lines of {log}:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a log, for an error message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else f"({log} missing)"


def machine(*packages: str, **extra) -> dict:
    """Where a result was measured: this machine, the versions of `packages`, and `extra` fields."""
    return {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{package: version(package) for package in packages},
        **extra,
    }


def repo_relative(path: Path) -> str:
    """`path` as a result file shows it: relative to the repository where it lies inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def write_result(out: Path, result: dict) -> None:
    """Every benchmark leaves its figures as indented JSON, by default under bench/results/."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
