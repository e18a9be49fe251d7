"""What the benchmark scripts share: their smoke mode, starting `orch`, reading a run's files while it
runs, a failing process's own logs, the result file.

The scripts run as `python bench/X.py`, so bench/ is on sys.path and they import this as `common`.
"""

from __future__ import annotations

import argparse
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.rundir.base_event import BaseEvent

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the package (and the tests' helpers) import from a checkout without installing
DEFAULT_RECIPE = REPO / "recipes" / "tiny-pretrain.yaml"
RESULTS = REPO / "bench" / "results"
# Small corpus and short lr warmup, as the distributed tests use; every step logged.
FAST = ["data.max_bytes=1500000", "train.schedule.warmup_steps=2", "train.log_interval=1"]
POLL_S = 0.05  # metrics and events files: the resolution of every "row appeared" time
CHILD_LOGS = ("*.log", "*.out")  # what the processes a benchmark starts write: rank, launcher and Slurm logs
CHILD_LOGS_SHOWN = 3


def parse_args(parser: argparse.ArgumentParser, smoke: dict) -> argparse.Namespace:
    """The command line, with `--smoke`: then `smoke`'s values are the defaults (options given still win).

    A smoke run takes the fewest steps, repeats and sizes that still run every part of a benchmark
    and write its whole result; its figures mean nothing, so by default it writes under
    bench/results/smoke/, never over a measured result. The test suite runs every benchmark so
    (tests/distributed/test_benchmarks.py), so that none stops working unnoticed.
    """
    parser.add_argument("--smoke", action="store_true",
                        help="the fewest steps, repeats and sizes that run every part and write the result: "
                             + ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in smoke.items()))
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**smoke)
        if isinstance(out := parser.get_default("out"), Path):
            parser.set_defaults(out=results_dir(smoke=True) / out.name)
        args = parser.parse_args()
    return args


def results_dir(smoke: bool) -> Path:
    return RESULTS / "smoke" if smoke else RESULTS


def chosen(configs: dict[str, tuple[str, ...]], names: str, baseline: str) -> dict[str, tuple[str, ...]]:
    """The configurations named in `names` (comma-separated), in `configs`' order; `baseline`, which the
    others are compared with, must be one of them."""
    wanted = names.split(",")
    if not set(wanted) <= set(configs) or baseline not in wanted:
        raise SystemExit(f"choose from {', '.join(configs)} (comma-separated), {baseline} included; not {names!r}")
    return {name: overrides for name, overrides in configs.items() if name in wanted}


def orch_argv(command: str, run_dir: Path, *args: str) -> list[str]:
    """`orch COMMAND ARGS --run-dir RUN_DIR` as a user runs it, with this interpreter."""
    return [sys.executable, "-m", "orchestrator", command, *args, "--run-dir", str(run_dir)]


def run_logged(argv: list[str], log: Path, env: dict | None = None, logs: Path | None = None) -> None:
    """Run `argv` from the repository root to completion, output to `log`. A failure raises with the tails
    of `log` and of the logs under `logs`, where the processes it started (ranks) say why they failed."""
    with log.open("w") as out:
        code = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed with exit code {code}; {last_lines(log, logs)}")


def row_after(run_dir: Path, step: int) -> float | None:
    """The time a metrics row past `step` was first seen (within POLL_S), or None (`RunDir.metric_rows`
    skips the torn last line of a log still being appended to)."""
    from orchestrator.rundir.layout import RunDir  # importable once REPO is on sys.path

    return time.time() if any(r["step"] > step for r in RunDir(run_dir).metric_rows()) else None


def events(run_dir: Path, name: str, since: float = 0.0) -> list[BaseEvent]:
    """The run's events of the kind named `name` in the log (`preempted`, `slurm_start`; the results
    name their timings so) so far, those at or after `since` (a time.time()), typed (`rows`)."""
    from orchestrator.rundir.layout import RunDir  # importable once REPO is on sys.path

    return [e for e in RunDir(run_dir).history() if e.event == name and e.time >= since]


def first_event(run_dir: Path, name: str, since: float = 0.0) -> BaseEvent | None:
    """The first of those events, or None: something to wait_for."""
    return next(iter(events(run_dir, name, since)), None)


def wait_for(found: Callable, ended: Callable[[], str | None], log: Path, what: str, timeout_s: float = 300,
             check_every_s: float = POLL_S, logs: Path | None = None):
    """Poll `found()` every POLL_S until it returns something (a value, or the time the condition was first seen).

    `ended()`, asked every `check_every_s`, says why nothing more will come (the process or job is over) or None;
    it is asked before `found()`, so what just ended has had its last chance. Failures end with the tails of
    `log` and of the logs under `logs` (see last_lines).
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
            raise RuntimeError(f"{over} and still no {what}; {last_lines(log, logs)}")
        time.sleep(POLL_S)
    raise TimeoutError(f"no {what} after {timeout_s:.0f}s; {last_lines(log, logs)}")


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a log, for an error message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else f"({log} missing)"


def last_lines(log: Path, logs: Path | None = None) -> str:
    """For an error message, read before the scratch directory holding them is deleted: the tail of `log`
    (a command's own output), then of the CHILD_LOGS_SHOWN most recently written, non-empty logs under
    `logs` (a run's `logs/`: the rank that failed wrote its traceback there, not to its parent's output)."""
    children = [p for pattern in CHILD_LOGS for p in logs.rglob(pattern)] if logs is not None and logs.is_dir() else []
    children = sorted((p for p in children if p != log and p.stat().st_size), key=lambda p: p.stat().st_mtime)[-CHILD_LOGS_SHOWN:]
    return "\n".join([f"last lines of {log}:\n{tail(log)}", *(f"last lines of {p}:\n{tail(p, 20)}" for p in children)])


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
