"""One gate's verdict: the value measured, the threshold it was held to, and the evidence."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GateResult:
    name: str
    status: str  # pass | warn | fail | skipped
    value: float | None
    threshold: float | None
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    required: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def scores(self) -> dict[str, float | dict[str, float]]:
        """The downstream tasks' scores the evaluation gate keeps in its evidence (a task's score, or
        {metric: score} for a task listed with several metrics); empty for the other gates."""
        scores = self.evidence.get("scores")
        return scores if isinstance(scores, dict) else {}


def judge(value: float, threshold: float | None, warn_margin: float) -> str:
    """For values where lower is better: fail above the threshold, warn within `warn_margin` of it.
    A value that is not a finite number fails whatever the threshold."""
    if not math.isfinite(value):
        return "fail"
    if threshold is None:
        return "pass"
    if value > threshold:
        return "fail"
    return "warn" if value > threshold * (1 - warn_margin) else "pass"


def skipped(name: str, reason: str) -> GateResult:
    return GateResult(name=name, status="skipped", value=None, threshold=None, summary=reason)
