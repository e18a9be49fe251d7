"""Slurm's client commands, each failure turned into one readable line."""

from __future__ import annotations

import shutil
import subprocess

from orchestrator.errors import SlurmError

TIMEOUT_S = 60


def slurm(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"`{argv[0]}` not found: Slurm's client commands are not installed here (for a local cluster: slurm/dev-cluster.sh up)")
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(argv[:2])}` did not answer within {TIMEOUT_S}s: is the Slurm controller reachable?") from None
    if result.returncode != 0:
        lines = [l.strip() for l in (result.stderr + result.stdout).splitlines() if l.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise SlurmError(f"{argv[0]} failed: {reason.removeprefix(argv[0] + ': ').removeprefix('error: ')}")
    return result.stdout


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, RunTime, Restarts, NodeList, ...)."""
    out = slurm("scontrol", "show", "job", "-o", job_id)
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def job_states(job_id: str) -> list[str]:
    """The state of each task of a job: one for a plain job, one per task (and pending range) of an array."""
    out = slurm("scontrol", "show", "job", "-o", job_id)
    return [dict(part.split("=", 1) for part in line.split() if "=" in part).get("JobState", "") for line in out.splitlines() if line.strip()]
