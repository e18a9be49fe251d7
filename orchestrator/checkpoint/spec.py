"""The `checkpoint` section: where checkpoints go and how often they are taken."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from orchestrator.spec import Spec


class CheckpointSpec(Spec):
    """`dir` defaults to `<run dir>/checkpoints`; a final checkpoint is always written."""

    dir: Optional[Path] = None
    interval_steps: Optional[int] = Field(None, gt=0)
