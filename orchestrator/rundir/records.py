"""What crosses from the control plane into the ranks (and back to the commands that inspect a
run), as frozen, typed records: the plan, the prepared data's location, the Slurm jobs, the
elastic-resume decision, the resolved recipe, the run's provenance and the dashboards' state.

The planner writes `plan.json` from a `PlanRecord`; every reader (ranks, energy, export, gates,
status, the Slurm batch step) gets one back from `read_plan`, so a renamed field fails in a unit
test, not at run time on a node. The resolved recipe is read through `read_recipe` alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, computed_field, field_serializer, model_serializer, model_validator

from orchestrator.shared.data.prepared import Manifest, PreparedData, manifest_content
from orchestrator.shared.energy.grid import Intensity
from orchestrator.shared.energy.hardware import CpuPower
from orchestrator.shared.model.architectures import Sizes
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.layout import RunDir, damaged

T = TypeVar("T")


class Record(BaseModel):
    """Closed and immutable, like the recipe's sections: an unknown or missing field is an error.

    A figure derived from the others (`computed_field`) is written for the reader's sake and
    derived again on reading, never taken from the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _derived_again(cls, data):
        if isinstance(data, dict) and cls.model_computed_fields:
            return {key: value for key, value in data.items() if key not in cls.model_computed_fields}
        return data

    def stored(self) -> dict:
        """The fields themselves, without the figures derived from them."""
        return self.model_dump(exclude=set(self.model_computed_fields))


class TopologyRecord(Record):
    """Where the ranks run: the planner's topology, as plan.json holds it."""

    nodes: int
    procs_per_node: int
    device: str
    comm_backend: str

    @computed_field
    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


class BatchRecord(Record):
    """The batch arithmetic: micro batch x accumulation x data-parallel ranks = global batch."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    data_parallel: int
    seq_len: int

    @computed_field
    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.data_parallel

    @computed_field
    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len


FIT_HEADROOM = 0.9
"""The share of a device's (or a node's) memory an estimate may fill and still be said to fit."""


class MemoryRecord(Record):
    """One device's memory, as `orchestrator.plan.memory` estimates it (bytes)."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    gather_buffer_bytes: int
    activations_bytes: int
    activations_other_bytes: int
    """The activations with `train.activation_checkpointing` set the other way, for the plan to show."""
    host_offload_bytes: int
    capacity_bytes: int

    @computed_field
    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.gather_buffer_bytes + self.activations_bytes

    @computed_field
    @property
    def fits(self) -> bool:
        return self.total_bytes <= FIT_HEADROOM * self.capacity_bytes

    @property
    def activations_dominate(self) -> bool:
        return max(self.activations_bytes, self.activations_other_bytes) > self.total_bytes - self.activations_bytes


class HostMemoryRecord(Record):
    """One node's host memory: what each rank holds on the host while its model is constructed, and
    what offload keeps there for the whole run.

    Construction is where a model larger than one rank is lost: without partitioned construction
    every rank builds the whole model before DeepSpeed partitions it (8 ranks x a 7B model in fp32
    is 8 x 26 GiB). On a GPU the model is built on the device, so only the CPU device's
    construction counts here."""

    procs_per_node: int
    construction_bytes: int
    """Per rank: the whole model, or with partitioned construction its partition plus one gathered layer."""
    partitioned: bool
    offload_bytes: int
    """Per rank: optimizer state (and at stage 3 parameters) offloaded to the host."""
    capacity_bytes: int
    """The node's memory."""

    @computed_field
    @property
    def per_node_bytes(self) -> int:
        return self.procs_per_node * (self.construction_bytes + self.offload_bytes)

    @computed_field
    @property
    def fits(self) -> bool:
        return self.per_node_bytes <= FIT_HEADROOM * self.capacity_bytes


class ModelRecord(Record):
    arch: str
    num_params: int
    frozen_params: int = 0
    """Parameters that take no weight gradient (a LoRA fine-tune's base): 4 training FLOPs per token
    each, not 6. Absent from plans made before it was recorded."""
    sizes: Sizes
    base: str | None


class EstimateRecord(Record):
    flops_per_token: float
    peak_flops_per_device: float
    assumed_mfu: float
    """0 where the estimate rests on earlier runs' measured throughput (see `basis`)."""
    tokens_per_s: float
    wall_s: float
    device_hours: float
    wall_s_range: tuple[float, float] | None = None
    """Fastest and slowest wall time the estimate allows (absent from plans made before it was given)."""
    basis: str = ""
    """Measured by earlier runs of this shape on this machine, or assumed (and from what)."""
    calibration_key: str = ""
    """What the run's measurements are filed under once it completes (`orchestrator.plan.calibration`)."""


class EnergyForecast(Record):
    """What the run will cost before it starts: device-hours x power per device, x PUE, x grid
    intensity (`orchestrator.energy.forecast`); the figures are None where no power is known."""

    device_hours: float
    power_per_device_w: float | None
    kwh: float | None
    facility_kwh: float | None
    kgco2e: float | None
    basis: str
    kwh_range: tuple[float, float] | None = None
    """IT energy over the time estimate's range (absent from plans made before it was given)."""


class EnergyRecord(Record):
    """The energy plan, resolved once by the planner (intensity with its hourly series, CPU power,
    forecast), so that the ranks never read CodeCarbon's tables themselves."""

    pue: float
    intensity: Intensity
    cpu: CpuPower
    forecast: EnergyForecast | None

    @model_validator(mode="before")
    @classmethod
    def _without_series_points(cls, data):
        """The intensity's point count is written for the reader's sake and derived again on reading."""
        if isinstance(data, dict) and isinstance(data.get("intensity"), dict):
            return {**data, "intensity": {k: v for k, v in data["intensity"].items() if k != "series_points"}}
        return data

    @field_serializer("intensity")
    def _intensity_as_written(self, intensity: Intensity) -> dict:
        return {**intensity.summary(), "series": [list(point) for point in intensity.series]}


class CommandRecord(Record):
    """A process the plan starts: its argv, the variables added to the environment, its working
    directory, and its log (relative to the run directory)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: str


class PlanRecord(Record):
    """`plan.json`, as `orch plan --json` prints it."""

    run_dir: Path
    recipe_hash: str
    dry_run: bool
    backend: str
    topology: TopologyRecord
    batch: BatchRecord
    model: ModelRecord
    memory_per_device: MemoryRecord
    host_memory_per_node: HostMemoryRecord
    estimate: EstimateRecord
    energy: EnergyRecord
    backend_files: dict[str, dict]
    checkpoint_dir: Path
    data_cache_dir: Path
    commands: list[CommandRecord]
    warnings: list[str]

    @property
    def backend_config(self) -> dict:
        """The backend's one config file, as written beside the plan."""
        (config,) = self.backend_files.values()
        return config


# -- data.json: the prepared data's directory and its manifest -----------------------------------------

DATA_FIGURES = ("vocab_size", "train_tokens", "val_tokens", "canaries")
"""The manifest's figures `data.json` holds first, after `dir` (the rest follow in the manifest's order)."""


class DataRecord(Record):
    """`data.json`: where the prepared data is, and its manifest (`orchestrator.shared.data.prepared`, text
    or instruction data) as preparation wrote it, less the file list. The file holds them side by
    side in one object, as it always has; `prepared` is the same data as the ranks load it from the
    directory."""

    dir: Path
    manifest: Manifest

    @model_validator(mode="before")
    @classmethod
    def _manifest_beside_dir(cls, data):
        if isinstance(data, dict) and "manifest" not in data:
            return {"dir": data.get("dir"), "manifest": {key: value for key, value in data.items() if key != "dir"}}
        return data

    @model_serializer(mode="wrap")
    def _flat(self, handler) -> dict:
        content, manifest = handler(self), manifest_content(self.manifest)
        return {"dir": content["dir"], **{key: manifest[key] for key in DATA_FIGURES if key in manifest},
                **{key: value for key, value in manifest.items() if key not in DATA_FIGURES}}

    @property
    def prepared(self) -> PreparedData:
        return PreparedData(self.dir, self.manifest)


def _job_id(value: str) -> str:
    if not re.fullmatch(r"\d+(_\d+)?", value):
        raise ValueError(f"{value!r} is not a Slurm job id (digits, optionally _N for an array task): correct or remove the file")
    return value


class JobsRecord(Record):
    """`slurm.json`: the run's Slurm job ids, oldest first; each checked to be one, as they are passed
    to scancel and scontrol, where a hand-edited `--user=...` would be an option."""

    job_ids: list[Annotated[str, AfterValidator(_job_id)]]
    kinds: list[Literal["prepare", "train", "sweep", "gate", "release"]] = []
    """Each job's part, in the order of `job_ids` (a record without them holds training jobs only)."""

    @model_validator(mode="after")
    def _a_kind_per_job(self) -> "JobsRecord":
        if self.kinds and len(self.kinds) != len(self.job_ids):
            raise ValueError(f"{len(self.kinds)} kinds for {len(self.job_ids)} job ids: correct or remove the file")
        return self

    def of_kind(self, kind: str) -> list[str]:
        if not self.kinds:
            return list(self.job_ids) if kind == "train" else []
        return [job for job, k in zip(self.job_ids, self.kinds) if k == kind]

    def chain(self) -> list[tuple[str, str]]:
        """(kind, job id) for each job, oldest first."""
        return list(zip(self.kinds or ["train"] * len(self.job_ids), self.job_ids))


class ElasticRecord(Record):
    """`elastic.json`: the checkpoint `orch run` prepared for a resume at another world size."""

    tag: str
    universal_root: Path
    from_world_size: int
    to_world_size: int
    converted: bool


def write_plan(run: RunDir, plan: PlanRecord) -> None:
    run.write_file(run.plan.name, plan_json(plan))


def plan_json(plan: PlanRecord) -> str:
    return json.dumps(plan.model_dump(mode="json"), indent=2)


def _read(path: Path, parse: Callable[[str], T]) -> T:
    """A run file parsed, or DamagedRun naming it: every reader below goes through here, so a file
    left damaged by a crash or a hand edit is one readable line for every command, not a traceback."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:  # UnicodeDecodeError and pydantic's ValidationError are ValueErrors
        raise damaged(path, exc) from None


def read_plan(run: RunDir) -> PlanRecord:
    return _read(run.plan, PlanRecord.model_validate_json)


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def read_recipe(run: RunDir) -> Recipe:
    """The resolved recipe the run was planned from (already validated once; validated again, so a
    hand-edited file fails here with pydantic's message, not later with a KeyError)."""
    return _read(run.recipe, lambda text: Recipe.model_validate(yaml.safe_load(text)))


def read_data(run: RunDir) -> DataRecord:
    return _read(run.data, DataRecord.model_validate_json)


def write_data(run: RunDir, data: PreparedData) -> None:
    """The prepared data's location and its manifest (the file list stays in the cache)."""
    run.write_file(run.data.name, DataRecord(dir=data.dir, manifest=data.manifest).model_dump_json(indent=2))


def read_jobs(run: RunDir) -> JobsRecord:
    return _read(run.jobs, JobsRecord.model_validate_json) if run.jobs.exists() else JobsRecord(job_ids=[])


def add_job(run: RunDir, job_id: str, kind: str) -> None:
    jobs = read_jobs(run)
    kinds = jobs.kinds or ["train"] * len(jobs.job_ids)
    run.write_file(run.jobs.name, JobsRecord(job_ids=[*jobs.job_ids, job_id], kinds=[*kinds, kind]).model_dump_json())


def read_elastic(run: RunDir) -> ElasticRecord | None:
    return _read(run.elastic, ElasticRecord.model_validate_json) if run.elastic.exists() else None


def write_elastic(run: RunDir, record: ElasticRecord) -> None:
    run.write_file(run.elastic.name, record.model_dump_json(indent=1))



class CodeVersion(Record):
    version: str
    git_commit: str | None
    git_dirty: bool | None


class ProvenanceRecord(Record):
    """`provenance.json`: what the run was made from, written once before its first process."""

    orchestrator: CodeVersion
    python: str
    platform: str
    libraries: dict[str, str | None]
    recipe_hash: str
    recipe_sources: list[str]
    data: dict[str, Any]
    """The prepared data's manifest as preparation wrote it, its source files (`files`) added."""

    def source_files(self) -> list[dict] | None:
        """The source files with their sha256, as the prepared data listed them."""
        return self.data.get("files")


def write_provenance(run: RunDir, record: ProvenanceRecord) -> None:
    run.write_file(run.provenance.name, json.dumps(record.model_dump(mode="json"), indent=2))


def read_provenance(run: RunDir) -> ProvenanceRecord | None:
    return _read(run.provenance, ProvenanceRecord.model_validate_json) if run.provenance.exists() else None


class TrackingRecord(Record):
    """`tracking.json`: the ids the dashboards gave (so a resumed or requeued run logs into the same
    dashboard runs) and how far the mirror got in each log."""

    ids: dict[str, str] = {}
    last_step: int = 0
    events: int = 0
    series: int = 0


def write_tracking(run: RunDir, record: TrackingRecord) -> None:
    run.write_json(run.tracking, record.model_dump(mode="json"))


def read_tracking(run: RunDir) -> TrackingRecord:
    return _read(run.tracking, TrackingRecord.model_validate_json) if run.tracking.exists() else TrackingRecord()
