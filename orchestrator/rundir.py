"""The run directory's layout: one place that names every file a run writes.

A run can be understood and repeated from its directory alone: the resolved recipe, the plan,
the backend config, provenance, metrics, per-rank logs and checkpoints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.plan.planner import LAUNCH_LOG, PLAN_FILE, RECIPE_FILE


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def plan(self) -> Path:
        return self.path / PLAN_FILE

    @property
    def data(self) -> Path:
        return self.path / "data.json"

    @property
    def provenance(self) -> Path:
        return self.path / "provenance.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def launcher_log(self) -> Path:
        return self.path / LAUNCH_LOG

    def rank_log(self, rank: int) -> Path:
        return self.path / "logs" / f"rank-{rank}.log"

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def write_file(self, relative: str, content: str) -> None:
        """Write-temp-then-rename, so a reader never sees half a file."""
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp")
        temp.write_text(content)
        os.replace(temp, target)

    def metric_rows(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
