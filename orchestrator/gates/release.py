"""`orch release RUN_DIR [--checkpoint N] [--to DIR] [--register]`: publish a checkpoint that passed.

A release is refused unless `orch gate` passed every required gate on exactly this checkpoint's
content. It holds the consolidated model (safetensors, config, tokenizer: `from_pretrained` loads
it), a model card, the gate report, the energy bill, the recipe, the data manifest and
`release.json`, the sha256 of every file. It is written beside its final place and renamed into
it, then made read-only; a second release to the same place is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from orchestrator.checkpoint import store
from orchestrator.errors import ReleaseRefused
from orchestrator.gates.card import model_card
from orchestrator.gates.report import GateReport
from orchestrator.rundir.layout import RELEASE_MANIFEST, RunDir
from orchestrator.rundir.records import read_plan, read_recipe

RELEASE_FILE = RELEASE_MANIFEST


@dataclass(frozen=True)
class Release:
    path: Path
    checkpoint: str
    files: int
    registered: str | None = None


def gate_report_for(run_dir: Path, checkpoint: Path) -> GateReport:
    """The gate report of this checkpoint's content, or the reasons a release cannot go ahead."""
    path = RunDir(run_dir).gate_report(checkpoint.name)
    if not path.is_file():
        raise ReleaseRefused(f"{checkpoint.name} has not been gated: run `orch gate {run_dir} --checkpoint {store.step_of(checkpoint.name)}`")
    report = GateReport.read(path)
    if report.checkpoint_hash != store.content_hash(store.read_manifest(checkpoint)):
        raise ReleaseRefused(f"the gate results in {path} are for other content than {checkpoint.name} now holds: gate it again")
    failed = report.failed_required()
    if failed:
        reasons = "; ".join(f"{r.name} {r.status}: {r.summary}" for r in failed)
        raise ReleaseRefused(f"{checkpoint.name} failed required gates: {reasons}")
    return report


def release(run_dir: Path, step: int | None = None, to: Path | None = None, register: bool = False) -> Release:
    from orchestrator.checkpoint.export import choose_checkpoint, export_checkpoint
    from orchestrator.checkpoint.listing import checkpoint_root

    run = RunDir(run_dir)
    checkpoint = choose_checkpoint(checkpoint_root(run.path), step)
    report = gate_report_for(run.path, checkpoint)
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
    from orchestrator.tracking.mirror import mirror_once, run_config

    recipe = read_recipe(run)
    config = run_config(recipe.model_dump(mode="json"), read_plan(run))
    mirror_once(run.path, recipe.tracking, recipe.name, config, {"release/step": float(report.step)}, report.step,
                artifact=(target, f"release-{report.checkpoint}"))


def _add_records(run: RunDir, out: Path, report: GateReport) -> None:
    from orchestrator.energy.bill import bill_for

    (out / "gates.json").write_text(report.model_dump_json(indent=2))
    bill = None
    if run.energy_parts.is_dir():
        bill = bill_for(run.path)
        (out / "energy.json").write_text(json.dumps(bill, indent=2))
    shutil.copy2(run.recipe, out / "recipe.yaml")
    for record in (run.data, run.provenance, run.summary):
        if record.exists():
            shutil.copy2(record, out / record.name)
    (out / "README.md").write_text(model_card(run, report, bill))


def _write_manifest(run: RunDir, out: Path, checkpoint: Path, report: GateReport) -> int:
    files = {p.relative_to(out).as_posix(): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {
        "checkpoint": checkpoint.name,
        "checkpoint_hash": report.checkpoint_hash,
        "recipe_hash": report.recipe_hash,
        "data_manifest_sha256": files.get(run.data.name),
        "gates_passed": report.passed,
        "files": files,
    }
    (out / RELEASE_FILE).write_text(json.dumps(manifest, indent=2))
    return len(files) + 1


def verify_release(path: Path) -> list[str]:
    """Files whose content no longer matches the release manifest (empty: the release verifies)."""
    manifest = json.loads((path / RELEASE_FILE).read_text())
    problems = [f"{name}: missing" for name in manifest["files"] if not (path / name).is_file()]
    problems += [f"{name}: sha256 differs" for name, digest in manifest["files"].items() if (path / name).is_file() and _sha256(path / name) != digest]
    extra = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - set(manifest["files"]) - {RELEASE_FILE}
    return problems + [f"{name}: not in the manifest" for name in sorted(extra)]


def register_release(path: Path, name: str) -> str:
    """Log the release as an MLflow model version. The local store is `mlruns.db` beside the
    releases, with artifacts in `mlartifacts/` there, unless MLFLOW_TRACKING_URI names another."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{path.parent / 'mlruns.db'}"
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _make_read_only(path: Path) -> None:
    writable = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for item in [*path.rglob("*"), path]:
        item.chmod(item.stat().st_mode & ~writable)
