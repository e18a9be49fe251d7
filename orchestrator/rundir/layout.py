"""The run directory's layout: the one place that names every file a run writes.

A run can be understood and repeated from its directory alone: the resolved recipe, the plan,
the backend config, provenance, metrics, events, per-rank logs, checkpoints, the energy bill,
gate reports, releases and the dashboards' state.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from orchestrator.errors import DamagedRun
from orchestrator.shared.filetree import write_file
from orchestrator.rundir import events
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.metric_rows import MetricRow, SeriesPoint, parse_metric_row, parse_series_point
from orchestrator.rundir.rows import parse_event

RECIPE_FILE = "recipe.yaml"
PLAN_FILE = "plan.json"
LAUNCH_LOG = "logs/launcher.log"
RELEASE_MANIFEST = "release.json"
"""In a release directory: the sha256 of every file (`orch verify`)."""
HOROVOD_STATE = "horovod/state.pt"
"""Inside a Horovod checkpoint: the whole model and optimizer, once, so it loads at any world size."""
RANK_STATE = "rank-{rank}.json"
"""Inside every checkpoint: each rank's RNG states, data position and step, as JSON (no pickle)."""
_RANK_STATE = re.compile(r"^rank-(\d+)\.json$")


def rank_state_owner(name: str) -> int | None:
    """The rank a checkpoint file holds the state of, or None for any other file."""
    match = _RANK_STATE.match(Path(name).name)
    return int(match.group(1)) if match else None


class _Entry:
    """A file or directory of the run, by its name relative to the run directory."""

    def __init__(self, relative: str, why: str = ""):
        self.relative, self.__doc__ = relative, why or None

    def __get__(self, run: "RunDir | None", owner: type) -> Path:
        return self if run is None else run.path / self.relative


@dataclass(frozen=True)
class RunDir:
    path: Path

    recipe = _Entry(RECIPE_FILE, "the resolved recipe (after `base:` and overrides)")
    plan = _Entry(PLAN_FILE, "the plan (`orch plan --json`), which every rank reads")
    data = _Entry("data.json", "the prepared data's location and figures")
    provenance = _Entry("provenance.json")
    metrics = _Entry("metrics.jsonl", "one row per logged step, appended by rank 0")
    events = _Entry("events.jsonl", "the run's history, appended by rank 0, the Slurm batch step and a sweep's trial runner")
    summary = _Entry("summary.json", "the final figures of a completed run")
    attempt_lock = _Entry("attempt.lock", "locked while an attempt lives (`orch run` and its node launcher); names the holder")
    logs = _Entry("logs")
    launcher_log = _Entry(LAUNCH_LOG)
    default_checkpoints = _Entry("checkpoints", "where checkpoints go unless the recipe's `checkpoint.dir` says otherwise")
    universal = _Entry("universal", "checkpoints converted for another world size (DeepSpeed's universal format)")
    elastic = _Entry("elastic.json", "the checkpoint `orch run` prepared for a resume at another world size")
    energy = _Entry("energy.json", "the energy and carbon bill")
    energy_series = _Entry("energy/series.jsonl", "each node's energy and power over time")
    energy_parts = _Entry("energy/parts", "each rank's energy records, one file per rank and process lifetime, under its node")
    faults = _Entry("faults", "markers of the injected faults (ORCH_INJECT_FAULTS) that fired, so a restart does not fire one again")
    tracking = _Entry("tracking.json", "the dashboards' run ids and what was sent to them")
    jobs = _Entry("slurm.json", "the run's Slurm job ids, with each one's part (prepare, train, sweep, gate, release)")
    script = _Entry("job.sbatch", "the submitted Slurm script (a sweep's: its array job)")
    prepare_script = _Entry("prepare.sbatch", "the data preparation job's Slurm script, when orch submit found the data unprepared")
    gate_script = _Entry("gate.sbatch", "the gates' Slurm script (`orch submit --then gate`)")
    release_script = _Entry("release.sbatch", "the release's Slurm script (`orch submit --then gate,release`)")
    hangs = _Entry("hangs", "each hung attempt's stacks, one file per live rank: hangs/<attempt>/rank-<N>.txt")
    gates = _Entry("gates", "one gate report per gated checkpoint")
    releases = _Entry("releases")
    exports = _Entry("export")
    report = _Entry("report.html")
    tensorboard = _Entry("tensorboard")
    mlflow_db = _Entry("mlflow.db")
    mlflow_artifacts = _Entry("mlartifacts")

    def is_run(self) -> bool:
        """Whether `orch` made this directory: it holds a plan, or the lock an attempt takes before it
        writes one. A `recipe.yaml` is no sign: a project's own directory often has one."""
        return self.plan.is_file() or self.attempt_lock.is_file()

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    def rank_logs(self) -> list[Path]:
        return sorted(self.logs.glob("rank-*.log"))

    def rank_error(self, rank: int) -> Path:
        """The traceback of the rank's fatal exception in the current attempt, written as it was raised
        (`launch.rank_errors`): its time names the rank a crash started on."""
        return self.logs / f"rank-{rank}.error"

    @property
    def node_output_pattern(self) -> str:
        """srun's --output pattern: one file per node (`%N` is the node's name)."""
        return f"{self.logs}/node-%N.out"

    def gate_report(self, tag: str) -> Path:
        return self.gates / f"{tag}.json"

    def gate_reports(self) -> list[Path]:
        """Every checkpoint's gate report, oldest step first."""
        return sorted(self.gates.glob("step-*.json"))

    def metric_rows(self) -> list[MetricRow]:
        return events.read(self.metrics, parse_metric_row)

    def history(self) -> list[BaseEvent]:
        """Every event of the run, oldest first."""
        return events.read(self.events, parse_event)

    def energy_points(self) -> list[SeriesPoint]:
        """Every point of the energy series, oldest first."""
        return events.read(self.energy_series, parse_series_point)

    def read_json(self, name: str) -> dict:
        """A JSON object of the run, or DamagedRun naming the file and what is wrong with it."""
        path = self.path / name
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise damaged(path, exc) from None
        if not isinstance(content, dict):
            raise DamagedRun(f"{path}: damaged (not a JSON object)")
        return content

    def write_file(self, relative: str, content: str) -> None:
        """Written whole and never through a link (`filetree.write_file`): a reader never sees half a file."""
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        write_file(target, content)

    def write_json(self, path: Path, content: dict | list) -> None:
        self.write_file(str(path.relative_to(self.path)), json.dumps(content, indent=2))


def damaged(path: Path, exc: Exception) -> DamagedRun:
    """The one readable line for a run file that does not parse (`orch runs` shows it as the run's
    state): the file, and the first thing wrong with it."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
        reason = (f"{where}: " if where else "") + first["msg"] + more
    elif isinstance(exc, UnicodeDecodeError):
        reason = f"not text: byte {exc.start} is not UTF-8"
    elif isinstance(exc, json.JSONDecodeError):
        reason = f"not valid JSON at line {exc.lineno}: {exc.msg}"
    elif isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
    elif isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        reason = f"not valid YAML at line {exc.problem_mark.line + 1}: {exc.problem}"
    else:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DamagedRun(f"{path}: damaged ({reason})")
