"""Slurm's client commands, each failure turned into one readable line.

Every Slurm command the orchestrator issues (sbatch, squeue, scontrol, scancel, sinfo, a doctor's
srun) goes through `slurm()`, and `slurm()` through `runner`: the one seam a test points at a
recorder to see what a code path asks the scheduler, with no cluster (`tests/unit/test_slurm_seam.py`
also fails on a module that calls a Slurm command beside it). The job step's own long-running
`srun` is a process the batch step starts and signals, not a command: it is not here.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection
from typing import Callable, NamedTuple

from orchestrator.errors import SlurmError

TIMEOUT_S = 60
QUERY_TIMEOUT_S = 5
"""How long a status query waits. A controller that is down costs `orch runs` and `orch status` this,
once, instead of the client's own retries (squeue 9 s, scontrol 18 s here) for every run they show."""


class Answer(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_command(argv: list[str], timeout_s: float) -> Answer:
    """The command itself, on this machine; raises `subprocess.TimeoutExpired` past `timeout_s`."""
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"`{argv[0]}` not found: Slurm's client commands are not installed here (for a local cluster: slurm/dev-cluster.sh up)")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    return Answer(result.returncode, result.stdout, result.stderr)


runner: Callable[[list[str], float], Answer] = run_command
"""Where `slurm()` sends every command: `run_command`, or in a test a recorder with the same signature."""


def slurm(*argv: str, timeout_s: float = TIMEOUT_S) -> str:
    """The command's standard output; SlurmError with one readable line when it fails or the
    controller does not answer within `timeout_s`."""
    try:
        result = runner(list(argv), timeout_s)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(argv[:2])}` did not answer within {timeout_s:g}s: is the Slurm controller reachable?") from None
    if result.returncode != 0:
        lines = [l.strip() for l in (result.stderr + result.stdout).splitlines() if l.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise SlurmError(f"{argv[0]} failed: {reason.removeprefix(argv[0] + ': ').removeprefix('error: ')}")
    return result.stdout


class Job(NamedTuple):
    state: str
    """Slurm's JobState: PENDING, RUNNING, COMPLETED, FAILED, ..."""
    exit_code: int


LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING"})


def job_table(job_ids: Collection[str]) -> dict[str, Job]:
    """Each of these jobs the controller still knows, from one `squeue` call for all of them, so that a
    list of runs asks once however many it shows. An array job reads as its first task still queued or
    running, else its first task. A job missing from the table ended longer ago than the controller
    remembers (MinJobAge)."""
    if not job_ids:
        return {}
    try:
        out = slurm("squeue", f"--jobs={','.join(sorted(set(job_ids)))}", "--states=all", "--noheader",
                    "--Format=ArrayJobID:|,State:|,exit_code:|", timeout_s=QUERY_TIMEOUT_S)
    except SlurmError as exc:
        if "Invalid job id" in str(exc):  # squeue's answer when the only job asked for is gone
            return {}
        raise
    tasks: dict[str, list[Job]] = {}
    for line in out.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) >= 3 and parts[0]:
            # exit_code is the wait status: the exit code in its high byte.
            tasks.setdefault(parts[0], []).append(Job(parts[1], int(parts[2]) >> 8 if parts[2].isdigit() else 0))
    return {job: next((t for t in found if t.state in LIVE_STATES), found[0]) for job, found in tasks.items()}


def job_states(job_id: str) -> list[str]:
    """The state of each task of a job: one for a plain job, one per task (and pending range) of an array."""
    out = slurm("scontrol", "show", "job", "-o", job_id)
    return [dict(part.split("=", 1) for part in line.split() if "=" in part).get("JobState", "") for line in out.splitlines() if line.strip()]
