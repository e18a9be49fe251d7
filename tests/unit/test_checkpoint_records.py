"""The checkpoint manifest, the run summary and the attempt holder as typed records: each round-trips
through its writer and reader, and each reads as the previous version wrote it (no `format` field)."""

import json
import os
from pathlib import Path

import pytest

from orchestrator.starting.attempt import hold_attempt
from orchestrator.shared.checkpoint import store
from orchestrator.errors import DamagedRun
from orchestrator.rundir.checkpoint_records import (
    FORMAT, AttemptHolder, CheckpointManifest, RunSummary, parse_holder, read_manifest, read_summary, write_summary,
)
from orchestrator.rundir.layout import RunDir

OLD_RUN = Path(__file__).parent / "run_fixtures" / "written-by-d92f83d"

RECIPE = {"name": "tiny", "train": {"steps": 6}}
META = {"recipe": RECIPE, "recipe_hash": "abc", "world_size": 2, "zero_stage": 1, "tokens": 12288, "libraries": {"torch": "2.4"}}


def _checkpoint(tmp_path: Path, step: int = 6) -> Path:
    staging = tmp_path / f"{store.STAGING_PREFIX}{step}"
    staging.mkdir(parents=True)
    (staging / "shard.pt").write_bytes(b"12345678")
    return store.commit(tmp_path, staging, step, store.describe_files(staging, ["shard.pt"]), META)


def test_a_committed_manifest_round_trips(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    manifest = read_manifest(checkpoint)
    assert manifest.format == FORMAT and manifest.step == 6 and manifest.world_size == 2 and manifest.recipe == RECIPE
    assert manifest.files["shard.pt"].bytes == 8 and len(manifest.files["shard.pt"].xxh3_128) == 32
    assert (checkpoint / store.MANIFEST).read_text() == manifest.to_json()
    assert CheckpointManifest.from_file(json.loads(manifest.to_json())) == manifest


def test_a_manifest_keeps_the_previous_writers_keys_and_adds_only_its_format(tmp_path):
    """What d92f83d's `commit` wrote: step, committed_at, the saver's figures and files, keys sorted."""
    checkpoint = _checkpoint(tmp_path)
    written = json.loads((checkpoint / store.MANIFEST).read_text())
    previous = {"step": 6, "committed_at": written["committed_at"], **META, "files": written["files"]}
    assert written == {**previous, "format": FORMAT}
    old = json.dumps(previous, indent=1, sort_keys=True)
    (checkpoint / store.MANIFEST).write_text(old)
    manifest = read_manifest(checkpoint)
    assert manifest.format == 0 and manifest.model_dump(exclude={"format"}) == CheckpointManifest.from_file(written).model_dump(exclude={"format"})
    assert store.verify(checkpoint).ok and store.content_hash(manifest) == store.content_hash(CheckpointManifest.from_file(written))


def test_a_listing_alone_and_a_newer_format_read_as_they_should(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    files = json.loads((checkpoint / store.MANIFEST).read_text())["files"]
    (checkpoint / store.MANIFEST).write_text(json.dumps({"files": files}))  # a universal conversion's manifest
    assert read_manifest(checkpoint).step is None and store.verify(checkpoint).ok
    (checkpoint / store.MANIFEST).write_text(json.dumps({"files": files, "format": FORMAT + 1}))
    verdict = store.verify(checkpoint)
    assert not verdict.ok and verdict.reason.startswith("unreadable manifest: format: ")


def test_a_summary_round_trips_and_reads_as_the_previous_version_wrote_it(tmp_path):
    run = RunDir(tmp_path)
    assert read_summary(run) is None
    summary = RunSummary(status="completed", steps=6, first_loss=7.6, final_loss=7.2, wall_s=18.0, restarts=0,
                         energy={"kwh": 1e-5, "facility_kwh": 1e-5, "kgco2e": 0.0, "coverage": 0.0, "j_per_token": None})
    write_summary(run, summary)
    assert read_summary(run) == summary and json.loads(run.summary.read_text())["format"] == FORMAT
    old = read_summary(RunDir(OLD_RUN))
    assert old.format == 0 and old.completed and old.steps == 6 and old.energy.kwh == pytest.approx(2.3819043335256177e-05)
    assert old.ledger is None  # written before the goodput ledger
    assert old.model_dump(exclude={"format", "ledger"}) == json.loads((OLD_RUN / "summary.json").read_text())
    run.summary.write_text(json.dumps({"status": "completed", "steps": "six"}))
    with pytest.raises(DamagedRun, match=r"summary.json: damaged \(steps: "):
        read_summary(run)


def test_the_attempt_holder_round_trips_and_reads_as_the_previous_version_wrote_it(tmp_path):
    with hold_attempt(tmp_path / "run") as attempt:
        attempt.add_process(4242)
        content = (tmp_path / "run" / "attempt.lock").read_bytes()
    holder = parse_holder(content)
    assert holder == attempt.holder and holder.format == FORMAT and holder.pid == os.getpid() and holder.launchers == [4242]
    assert AttemptHolder.from_file(holder.to_bytes()) == holder
    previous = json.dumps({"pid": 7, "host": "node-1", "since": 1.5, "launchers": []}).encode()
    assert parse_holder(previous) == AttemptHolder(format=0, pid=7, host="node-1", since=1.5)
    assert parse_holder(b'{"pid": 7, "ho') is None and parse_holder(b"") is None
