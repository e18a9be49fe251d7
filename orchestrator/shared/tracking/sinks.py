"""Dashboards behind one small protocol: wandb, TensorBoard, MLflow, or a user's own class.

Each sink is opened with the run's identity and the ids it gave on an earlier attempt (so a
requeued job continues the same wandb run and MLflow run), then receives scalars by step and
artifacts. The libraries are imported when a sink opens, in the mirror's thread.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from orchestrator import hooks
from orchestrator.rundir.layout import RunDir
from orchestrator.tracking.spec import MlflowSpec, TensorBoardSpec, TrackingSpec, WandbSpec


def sqlite_uri(database: Path) -> str:
    """An MLflow store's URI for a database file, percent-quoted so the path reads back as itself
    (pasted in, a `#` or `%xx` in a run or sweep directory's name moved the store elsewhere)."""
    return "sqlite:///" + quote(str(database.resolve()))


@dataclass(frozen=True)
class RunIdentity:
    run_dir: Path
    name: str
    config: dict
    ids: dict = field(default_factory=dict)  # what sinks returned from `open` on earlier attempts


class Sink(Protocol):
    name: str

    def open(self, identity: RunIdentity) -> dict: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def artifact(self, path: Path, name: str) -> None: ...
    def close(self) -> None: ...


class WandbSink:
    name = "wandb"

    def __init__(self, spec: WandbSpec, group: str | None = None):
        self.spec, self.group = spec, group

    def open(self, identity: RunIdentity) -> dict:
        wandb = import_wandb()
        drop_empty_offline_runs(identity.run_dir / "wandb")
        run_id = identity.ids.get("wandb_id") or wandb.util.generate_id()
        online = self.spec.mode == "online"
        self.run = wandb.init(
            project=self.spec.project, entity=self.spec.entity, id=run_id, name=identity.name, mode=self.spec.mode, group=self.group,
            dir=str(identity.run_dir), config=identity.config, resume="allow" if online else None,
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        return {"wandb_id": run_id}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def artifact(self, path: Path, name: str) -> None:
        artifact = import_wandb().Artifact(name, type="model")
        artifact.add_dir(str(path))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


def import_wandb():
    """wandb, imported in seconds where torch and transformers are already loaded (a rank, a gate).

    wandb's pydantic models describe their fields in attribute docstrings. Before Python 3.13,
    pydantic finds a class's source by walking the frames of the import and asking
    `inspect.getmodule` of each, which scans every loaded module: wandb took 5 s of CPU to import
    beside torch, transformers and datasets, in rank 0 of every attempt. For this import pydantic
    reads each class's source with `inspect.getsourcelines`, as it does itself from Python 3.13:
    1.3 s, the same models and descriptions."""
    if "wandb" in sys.modules or sys.version_info >= (3, 13):
        import wandb

        return wandb
    from pydantic._internal import _docs_extraction

    walk = _docs_extraction._extract_source_from_frame
    _docs_extraction._extract_source_from_frame = _class_source
    try:
        import wandb
        import wandb.sdk.internal.datastore  # noqa: F401  (read by drop_empty_offline_runs)
    finally:
        _docs_extraction._extract_source_from_frame = walk
    return wandb


def _class_source(cls: type) -> list[str] | None:
    try:
        return inspect.getsourcelines(cls)[0]
    except (OSError, TypeError):
        return None


def drop_empty_offline_runs(wandb_dir: Path) -> list[Path]:
    """Removes offline run directories whose run file holds no record, and returns them.

    wandb keeps an offline run in memory until it closes, so an attempt killed outright leaves a file
    with only its header: no run id, no step. `wandb sync` would upload it as a separate, empty run
    beside the one the resumed attempts continue."""
    import_wandb()
    from wandb.sdk.internal import datastore

    dropped = []
    for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):
        store = datastore.DataStore()
        try:
            store.open_for_scan(str(path))
            empty = store.scan_record() is None
        except Exception:  # unreadable for another reason: keep it for a person to look at
            empty = False
        if empty:
            shutil.rmtree(path.parent)
            dropped.append(path.parent)
    return dropped


class TensorBoardSink:
    name = "tensorboard"

    def __init__(self, spec: TensorBoardSpec):
        self.spec = spec

    def open(self, identity: RunIdentity) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.spec.dir or RunDir(identity.run_dir).tensorboard))
        self.writer.add_text("config", f"```\n{json.dumps(identity.config, indent=1, default=str)}\n```")
        return {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def artifact(self, path: Path, name: str) -> None:
        self.writer.add_text("artifacts", f"{name}: {path}")

    def close(self) -> None:
        self.writer.close()


GROUP_TAG, PARENT_TAG = "orchestrator.group", "orchestrator.parent"


class MlflowSink:
    name = "mlflow"
    MAX_PARAM = 500

    def __init__(self, spec: MlflowSpec, group: str | None = None):
        self.spec, self.group = spec, group

    def open(self, identity: RunIdentity) -> dict:
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        uri = self.spec.tracking_uri or sqlite_uri(RunDir(identity.run_dir).mlflow_db)
        self.client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = self.client.get_experiment_by_name(self.spec.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            self.spec.experiment, artifact_location=RunDir(identity.run_dir).mlflow_artifacts.as_uri()
        )
        run_id = identity.ids.get("mlflow_run_id")
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {GROUP_TAG: self.group, "mlflow.parentRunId": self._parent(experiment_id)} if self.group else None
            run_id = self.client.create_run(experiment_id, run_name=identity.name, tags=tags).info.run_id
            params = [mlflow.entities.Param(k, str(v)[: self.MAX_PARAM]) for k, v in _flatten(identity.config).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[start : start + 100])
        self.run_id = run_id
        return {"mlflow_run_id": run_id, "mlflow_tracking_uri": uri}

    def _parent(self, experiment_id: str) -> str:
        """The group's parent run, created by the first run of the group. Trials starting together may
        each create one: every run then takes the oldest, and a later one deletes its own."""
        query = f"tags.`{GROUP_TAG}` = '{self.group}' and tags.`{PARENT_TAG}` = 'true'"
        found = self.client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        mine = self.client.create_run(experiment_id, run_name=self.group, tags={GROUP_TAG: self.group, PARENT_TAG: "true"}).info.run_id
        oldest = self.client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])[0].info.run_id
        if oldest != mine:
            self.client.delete_run(mine)
        return oldest

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow names allow letters, digits, `_-./` and spaces: a GPU's `gpu:<uuid>` becomes `gpu_<uuid>`.
        self.client.log_batch(self.run_id, metrics=[Metric(re.sub(r"[^\w\-./ ]", "_", k), float(v), now, step) for k, v in metrics.items()])

    def artifact(self, path: Path, name: str) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path=name)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def make_sinks(spec: TrackingSpec) -> list[Sink]:
    sinks: list[Sink] = []
    if spec.wandb.enabled:
        sinks.append(WandbSink(spec.wandb, spec.group))
    if spec.tensorboard.enabled:
        sinks.append(TensorBoardSink(spec.tensorboard))
    if spec.mlflow.enabled:
        sinks.append(MlflowSink(spec.mlflow, spec.group))
    for reference in spec.custom:
        sinks.append(_custom(reference))
    return sinks


class UnloadableSink:
    """A custom sink that could not be created: it fails on open, so the failure is reported like any other."""

    def __init__(self, name: str, error: Exception):
        self.name, self.error = name, error

    def open(self, identity: RunIdentity) -> dict:
        raise self.error

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def artifact(self, path: Path, name: str) -> None: ...
    def close(self) -> None: ...


def _custom(reference: str) -> Sink:
    """Only a class marked @tracking_sink (orchestrator.hooks): the recipe in the run directory is data."""
    try:
        return hooks.load_sink_class(reference)()
    except Exception as exc:  # a user's class: whatever it raises is reported, not fatal
        return UnloadableSink(reference, exc)
