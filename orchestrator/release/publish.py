"""`orch release RUN_DIR [--checkpoint N] [--to DIR] [--register]`: publish a checkpoint that passed.

A release is refused unless `orch gate` passed every gate the recipe requires (`gates.required`)
on exactly this checkpoint's content. It holds the consolidated model (safetensors, config, tokenizer: `from_pretrained` loads
it), a model card, the gate report, the energy bill, the training compute and energy figures the
card states (`technical.json`), the recipe, the data manifest and `release.json`, the sha256 of
every file. It is written beside its final place and renamed into it, then made read-only; a
second release to the same place is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.shared.checkpoint import store
from orchestrator.errors import ReleaseRefused
from orchestrator.release.annex import RunRecords, technical_figures
from orchestrator.release.card import model_card
from orchestrator.release.integrity import ReleaseManifest, describe
from orchestrator.gates.outcome import GateReport, passes
from orchestrator.gates.spec import GATE_NAMES
from orchestrator.rundir.layout import RELEASE_MANIFEST, RunDir
from orchestrator.shared.redact import redact_recipe
from orchestrator.rundir.records import read_plan, read_recipe, recipe_yaml
from orchestrator.shared.tracking.sinks import sqlite_uri

RELEASE_FILE = RELEASE_MANIFEST
READ_ONLY_FILE, READ_ONLY_DIR = 0o444, 0o555


@dataclass(frozen=True)
class Release:
    path: Path
    checkpoint: str
    files: int
    registered: str | None = None


def gate_report_for(run_dir: Path, checkpoint: Path, required: list[str] | None) -> GateReport:
    """The gate report of this checkpoint's content, or the reasons a release cannot go ahead.
    `required` is the recipe's `gates.required` (None: every gate that was not skipped); each must be
    in the report and have passed, whatever the report itself marks as required."""
    path = RunDir(run_dir).gate_report(checkpoint.name)
    if not path.is_file():
        raise ReleaseRefused(f"{checkpoint.name} has not been gated: run `orch gate {run_dir} --checkpoint {store.step_of(checkpoint.name)}`")
    report = GateReport.read(path)
    if report.checkpoint_hash != store.content_hash(store.read_manifest(checkpoint)):
        raise ReleaseRefused(f"the gate results in {path} are for other content than {checkpoint.name} now holds: gate it again")
    results = {r.name: r for r in report.results}
    absent = [name for name in GATE_NAMES if name not in results]
    if absent:
        raise ReleaseRefused(f"the gate report {path} lacks {', '.join(absent)}: gate {checkpoint.name} again")
    wanted = required if required is not None else [r.name for r in report.results if r.status != "skipped"]
    failed = [results[name] for name in wanted if not passes(results[name].status)]
    if failed:
        reasons = "; ".join(f"{r.name} {r.status}: {r.summary}" for r in failed)
        raise ReleaseRefused(f"{checkpoint.name} failed required gates: {reasons}")
    return report


def release(run_dir: Path, step: int | None = None, to: Path | None = None, register: bool = False) -> Release:
    from orchestrator.checkpoint.export import choose_checkpoint, export_checkpoint
    from orchestrator.checkpoint.listing import checkpoint_root

    run = RunDir(run_dir)
    checkpoint = choose_checkpoint(checkpoint_root(run.path), step)
    report = gate_report_for(run.path, checkpoint, read_recipe(run).gates.required)
    target = (to or run.releases / checkpoint.name).absolute()
    if target.exists():
        raise ReleaseRefused(f"{target} already exists: a release is immutable; release to another --to")
    staging = target.with_name(f".{target.name}.release-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        export_checkpoint(run.path, store.step_of(checkpoint.name), out=staging)
        _add_records(run, staging, report)
        files = _write_manifest(run, staging, checkpoint, report)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _make_read_only(target)
    registered = register_release(target, run.path.name) if register else None
    _mirror(run, target, report)
    return Release(target, checkpoint.name, files, registered)


def _mirror(run: RunDir, target: Path, report: GateReport) -> None:
    """The release, as an artifact of the run's dashboard runs."""
    from orchestrator.shared.tracking.mirror import mirror_once, run_config

    recipe = read_recipe(run)
    config = run_config(recipe.model_dump(mode="json"), read_plan(run))
    mirror_once(run.path, recipe.tracking, recipe.name, config, {"release/step": float(report.step)}, report.step,
                artifact=(target, f"release-{report.checkpoint}"))


def _add_records(run: RunDir, out: Path, report: GateReport) -> None:
    from orchestrator.shared.energy.bill import bill_for
    from orchestrator.rundir.bill import bill_json

    (out / "gates.json").write_text(report.model_dump_json(indent=2))
    bill = None
    if run.energy_parts.is_dir():
        bill = bill_for(run.path)
        (out / "energy.json").write_text(bill_json(bill))
    (out / "technical.json").write_text(json.dumps(technical_figures(RunRecords.read(run), report, bill), indent=2))
    # Redacted again, not copied: a run planned before the planner redacted may hold a secret.
    (out / "recipe.yaml").write_text(recipe_yaml(redact_recipe(read_recipe(run))[0]))
    for record in (run.data, run.provenance, run.summary):
        if record.exists():
            shutil.copy2(record, out / record.name)
    (out / "README.md").write_text(model_card(run, report, bill, released=datetime.now(timezone.utc)))


def _write_manifest(run: RunDir, out: Path, checkpoint: Path, report: GateReport) -> int:
    files, sizes = describe(out)
    manifest = ReleaseManifest(checkpoint=checkpoint.name, checkpoint_hash=report.checkpoint_hash, recipe_hash=report.recipe_hash,
                               data_manifest_sha256=files.get(run.data.name), gates_passed=report.passed, files=files, sizes=sizes)
    (out / RELEASE_FILE).write_text(manifest.model_dump_json(indent=2))
    return len(files) + 1


def register_release(path: Path, name: str) -> str:
    """Log the release as an MLflow model version. The local store is `mlruns.db` beside the
    releases, with artifacts in `mlartifacts/` there, unless MLFLOW_TRACKING_URI names another."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(path.parent / "mlruns.db")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("releases")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "releases", artifact_location=(path.parent / "mlartifacts").as_uri()
    )
    run = client.create_run(experiment_id, run_name=f"release {path.name}")
    client.log_artifacts(run.info.run_id, str(path), artifact_path="release")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass  # already registered: this is a new version of it
    version = client.create_model_version(name, f"{run.info.artifact_uri}/release", run.info.run_id)
    return f"{name} version {version.version} in {uri}"


def _make_read_only(path: Path) -> None:
    """Readable by everyone and writable by no one, whatever mode each writer chose (safetensors writes
    0600): a release on a shared filesystem is loaded by other users, and never changed in place."""
    for item in [*path.rglob("*"), path]:
        item.chmod(READ_ONLY_DIR if item.is_dir() else READ_ONLY_FILE)
