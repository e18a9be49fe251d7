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
