"""A hung rank's Python stacks, taken from outside by its node launcher.

py-spy first (`py-spy dump`): it reads the interpreter's memory, so it needs nothing from the rank,
works on a rank blocked in native code, and with `--nonblocking` on a stopped one (a SIGSTOPped
process cannot be paused again: py-spy's default attach fails on it). Where py-spy is missing or
may not attach (ptrace forbidden), faulthandler: every reporting rank registered it on
`launch.progress.STACKS_SIGNAL`, so the launcher signals the rank and copies what it wrote. A
stopped rank cannot answer that signal; its file then says so, with the state the kernel gives.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from launch.progress import STACKS_SIGNAL

PY_SPY_TIMEOUT_S = 30
FAULTHANDLER_WAIT_S = 5
STATES = {"R": "running", "S": "sleeping", "D": "in uninterruptible wait", "T": "stopped", "t": "stopped by a tracer", "Z": "a zombie"}


def process_state(pid: int) -> str | None:
    """The state letter /proc gives (R, S, D, T, ...), None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def describe_state(state: str | None) -> str:
    return "unknown" if state is None else f"{STATES.get(state, 'in state')} (state {state})"


def stopped(state: str | None) -> bool:
    return state in ("T", "t")


def py_spy() -> str | None:
    """This environment's py-spy (installed beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def dump_with_py_spy(pid: int, state: str | None) -> tuple[str | None, str]:
    """(the stacks, None if py-spy could not take them; why not)."""
    binary = py_spy()
    if binary is None:
        return None, "py-spy is not installed"
    argv = [binary, "dump", "--pid", str(pid)] + (["--nonblocking"] if stopped(state) else [])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PY_SPY_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"py-spy failed ({exc})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"py-spy exited {done.returncode} ({last})"
    return done.stdout, ""


def dump_with_faulthandler(pid: int, state: str | None, stacks_file: Path) -> str:
    """What the rank's faulthandler wrote on STACKS_SIGNAL, or why there is nothing."""
    if stopped(state):
        return f"did not answer: {describe_state(state)}; a stopped process runs no signal handler\n"
    if not stacks_file.exists():
        return "did not answer: it had not reported yet, so no handler was registered (the signal would kill it)\n"
    os.kill(pid, STACKS_SIGNAL)
    deadline, size = time.monotonic() + FAULTHANDLER_WAIT_S, -1
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = stacks_file.stat().st_size
        if now and now == size:
            return stacks_file.read_text(errors="replace")
        size = now
    text = stacks_file.read_text(errors="replace")
    return text or f"did not answer within {FAULTHANDLER_WAIT_S} s: {describe_state(process_state(pid))}\n"


def dump_stacks(pid: int, stacks_file: Path) -> str:
    """One rank's stacks as text, saying how they were taken (or why they could not be)."""
    state = process_state(pid)
    header = f"pid {pid}, {describe_state(state)}\n"
    stacks, why_not = dump_with_py_spy(pid, state)
    if stacks is not None:
        return f"{header}stacks by py-spy:\n{stacks}"
    return f"{header}{why_not}; stacks by faulthandler:\n{dump_with_faulthandler(pid, state, stacks_file)}"
