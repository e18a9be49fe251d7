"""When a rank saves: every N steps, every M minutes, or at the interval that minimises lost work
plus checkpoint overhead (`interval_steps: auto`), and whether a save can still commit before the
scheduler ends the job.

Rank 0 decides time-based saves with its own clock; the training loop shares its decision with
every rank through the per-step collective, so all ranks save together.
"""

from __future__ import annotations

import math
import os
import time

from orchestrator.checkpoint.spec import CheckpointSpec
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.rows import Checkpoint, SlurmStart

FIRST_AUTO_INTERVAL_S = 60.0
"""With `auto`, the first checkpoint comes early, to measure the stall the interval is computed from."""


class SavePolicy:
    def __init__(self, spec: CheckpointSpec, steps: int, deadline: float | None, last_stall_s: float | None = None):
        """`last_stall_s`: the stall an earlier attempt measured (`last_stall`). Without it, an `auto` run
        whose attempts all die within FIRST_AUTO_INTERVAL_S would never commit a checkpoint."""
        self.spec, self.steps, self.deadline = spec, steps, deadline
        self.last_save_time = time.monotonic()
        self.last_stall_s = last_stall_s
        self.last_commit_s: float | None = None

    def step_due(self, step: int) -> bool:
        """A step-interval save; the last step is always saved by the loop itself."""
        every = self.spec.interval_steps
        return isinstance(every, int) and step % every == 0 and step != self.steps

    def time_due(self) -> bool:
        elapsed = time.monotonic() - self.last_save_time
        if self.spec.interval_minutes and elapsed >= self.spec.interval_minutes * 60:
            return True
        return self.spec.interval_steps == "auto" and elapsed >= self.auto_interval_s

    @property
    def auto_interval_s(self) -> float:
        """Young/Daly: sqrt(2 x stall x MTBF)."""
        if self.last_stall_s is None:
            return FIRST_AUTO_INTERVAL_S
        return math.sqrt(2 * self.last_stall_s * self.spec.mtbf_hours * 3600)

    def save_fits(self) -> bool:
        """Whether a save can still commit before the job's end. When it cannot, the last committed
        checkpoint stands and no partial save is started."""
        if self.deadline is None or self.last_commit_s is None:
            return True
        return time.time() + 2 * self.last_commit_s < self.deadline

    def saved(self, stall_s: float) -> None:
        self.last_stall_s = stall_s
        self.last_save_time = time.monotonic()

    def committed(self, commit_s: float) -> None:
        self.last_commit_s = commit_s


def last_stall(history: list[BaseEvent]) -> float | None:
    """The save stall the run's newest checkpoint measured, on whichever attempt."""
    stalls = [e.stall_s for e in history if isinstance(e, Checkpoint)]
    return stalls[-1] if stalls else None


def job_deadline(history: list[BaseEvent], job_id: str | None = None) -> float | None:
    """The end time Slurm gave this job (recorded by the batch step's `slurm_start` event), if this
    rank runs under one (`job_id`, default Slurm's SLURM_JOB_ID)."""
    job = job_id if job_id is not None else os.environ.get("SLURM_JOB_ID")
    starts = [e for e in history if isinstance(e, SlurmStart) and str(e.job_id) == job]
    return starts[-1].end_time if job and starts else None
