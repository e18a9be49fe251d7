"""The run directory's layout: the one place that names every file a run writes.

A run can be understood and repeated from its directory alone: the resolved recipe, the plan,
the backend config, provenance, metrics, events, per-rank logs, checkpoints, the energy bill,
gate reports, releases and the dashboards' state.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.rundir import events

RECIPE_FILE = "recipe.yaml"
PLAN_FILE = "plan.json"
LOGS_DIR = "logs"
LAUNCH_LOG = f"{LOGS_DIR}/launcher.log"
ENERGY_FILE = "energy.json"
ENERGY_SERIES_FILE = "energy/series.jsonl"
ENERGY_PARTS_DIR = "energy/parts"
TRACKING_FILE = "tracking.json"
JOBS_FILE = "slurm.json"
SCRIPT_FILE = "job.sbatch"
ELASTIC_FILE = "elastic.json"
GATES_DIR = "gates"
RELEASE_MANIFEST = "release.json"
"""In a release directory: the sha256 of every file (`orch verify`)."""
HOROVOD_STATE = "horovod/state.pt"
"""Inside a Horovod checkpoint: the whole model and optimizer, once, so it loads at any world size."""


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
    def logs(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def launcher_log(self) -> Path:
        return self.path / LAUNCH_LOG

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    @property
    def node_output_pattern(self) -> str:
        """srun's --output pattern: one file per node (`%N` is the node's name)."""
        return f"{self.logs}/node-%N.out"

    @property
    def default_checkpoints(self) -> Path:
        """Where checkpoints go unless the recipe's `checkpoint.dir` says otherwise."""
        return self.path / "checkpoints"

    @property
    def universal(self) -> Path:
        """Checkpoints converted for another world size (DeepSpeed's universal format)."""
        return self.path / "universal"

    @property
    def elastic(self) -> Path:
        return self.path / ELASTIC_FILE

    @property
    def energy(self) -> Path:
        return self.path / ENERGY_FILE

    @property
    def energy_series(self) -> Path:
        return self.path / ENERGY_SERIES_FILE

    @property
    def energy_parts(self) -> Path:
        """Each rank's energy records, one file per rank and process lifetime, under its node."""
        return self.path / ENERGY_PARTS_DIR

    @property
    def tracking(self) -> Path:
        return self.path / TRACKING_FILE

    @property
    def jobs(self) -> Path:
        return self.path / JOBS_FILE

    @property
    def script(self) -> Path:
        return self.path / SCRIPT_FILE

    @property
    def gates(self) -> Path:
        return self.path / GATES_DIR

    def gate_report(self, tag: str) -> Path:
        return self.gates / f"{tag}.json"

    def gate_reports(self) -> list[Path]:
        """Every checkpoint's gate report, oldest step first."""
        return sorted(self.gates.glob("step-*.json"))

    @property
    def releases(self) -> Path:
        return self.path / "releases"

    @property
    def exports(self) -> Path:
        return self.path / "export"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / "mlartifacts"

    def metric_rows(self) -> list[dict]:
        return events.read(self.metrics)

    def history(self) -> list[dict]:
        """Every event of the run, oldest first."""
        return events.read(self.events)

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def write_file(self, relative: str, content: str) -> None:
        """Write-temp-then-rename, so a reader never sees half a file."""
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp")
        temp.write_text(content)
        os.replace(temp, target)

    def write_json(self, path: Path, content: dict | list) -> None:
        self.write_file(str(path.relative_to(self.path)), json.dumps(content, indent=2))
