"""A checkpoint's gate report (`gates/<checkpoint>.json`): what `orch gate` writes and what release,
show, status, the run report and the model card read, with the one rule for what passing means."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from orchestrator.gates.result import GateResult
from orchestrator.gates.spec import GATE_NAMES
from orchestrator.rundir.layout import RunDir

PASSING = ("pass", "warn")
"""A warning passes: it says the value is near its threshold, not over it."""


def passes(status: str) -> bool:
    return status in PASSING


class GateReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str
    step: int
    checkpoint_hash: str
    recipe_hash: str
    evaluated_at: float
    required: list[str]
    passed: bool
    results: list[GateResult]

    @classmethod
    def judge(cls, results: list[GateResult], required: set[str], **fields) -> "GateReport":
        """Mark which results are required; the report passes when every required one does."""
        for result in results:
            result.required = result.name in required
        passed = all(passes(r.status) for r in results if r.required)
        return cls(results=results, passed=passed, required=sorted(required, key=GATE_NAMES.index), **fields)

    def failed_required(self) -> list[GateResult]:
        return [r for r in self.results if r.required and not passes(r.status)]

    def verdict(self) -> str:
        """`passed`, or `failed: <the required gates that failed>`."""
        return "passed" if self.passed else "failed: " + ", ".join(r.name for r in self.failed_required())

    def write(self, run: RunDir) -> None:
        run.write_file(str(run.gate_report(self.checkpoint).relative_to(run.path)), self.model_dump_json(indent=2))

    @classmethod
    def read(cls, path: Path) -> "GateReport":
        return cls.model_validate_json(path.read_text())


def newest_report(run: RunDir) -> GateReport | None:
    reports = run.gate_reports()
    return GateReport.read(reports[-1]) if reports else None
