"""The `checkpoint` section: where checkpoints go, how often they are taken, and which are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from orchestrator.spec import RuleViolation, Spec


class CheckpointSpec(Spec):
    """`dir` defaults to `<run dir>/checkpoints`; a final checkpoint is always written.

    `interval_steps: auto` derives the interval from the measured save stall and `mtbf_hours`
    (Young/Daly: sqrt(2 x stall x MTBF)).
    """

    dir: Optional[Path] = None
    interval_steps: Union[int, Literal["auto"], None] = None
    interval_minutes: Optional[float] = Field(None, gt=0)
    mtbf_hours: Optional[float] = Field(None, gt=0)
    keep_last: int = Field(3, ge=1)
    keep_every: Optional[int] = Field(None, gt=0)
    async_save: bool = True
    commit_timeout_s: float = Field(600, gt=0)

    @model_validator(mode="after")
    def _auto_needs_mtbf(self) -> "CheckpointSpec":
        if self.interval_steps == "auto" and self.mtbf_hours is None:
            raise RuleViolation("mtbf_hours", "`interval_steps: auto` needs `mtbf_hours`, the expected time between failures")
        if isinstance(self.interval_steps, int) and self.interval_steps < 1:
            raise RuleViolation("interval_steps", "interval_steps must be at least 1, or `auto`")
        return self
