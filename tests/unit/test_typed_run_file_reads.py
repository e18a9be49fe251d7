"""Run files read through their records where code used to index their dicts by key (issue 29): a
rank's checkpoint file list (`rank-N.files.json`), the Horovod backend's file in the plan, and the
prepared data's source list (`sources.json`, repeated in provenance.json) that the Annex XI text lists."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.data.corpus import SourceFile
from orchestrator.data.prepare import SOURCES, read_sources
from orchestrator.gates.outcome import GateReport
from orchestrator.gates.result import GateResult
from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.release.annex import RunRecords, technical_documentation
from orchestrator.rundir.checkpoint_records import FileEntry
from orchestrator.rundir.horovod_config import HorovodConfig
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import recipe_yaml, write_data, write_provenance
from orchestrator.shared.checkpoint import store
from orchestrator.shared.data.prepared import PreparedData, parse_manifest
from orchestrator.starting.provenance import provenance
from tests.helpers.planning import make_env, write_plan
from tests.helpers.project import TINY

FIGURES = {"vocab_size": 2048, "train_tokens": 900_000, "val_tokens": 20_000}
LISTED = [{"path": f"/corpus/part-{i}.txt", "sha256": f"{i:x}" * 64, "bytes": 1000 + i} for i in range(1, 3)]


def test_the_ranks_file_lists_are_gathered_as_manifest_entries(tmp_path):
    (tmp_path / "shard.pt").write_bytes(b"x" * 10)
    (tmp_path / store.RANK_MANIFEST.format(rank=0)).write_text(json.dumps(store.describe_files(tmp_path, ["shard.pt"])))
    files = store.wait_for_rank_manifests(tmp_path, 1, timeout_s=1)
    assert isinstance(files["shard.pt"], FileEntry) and files["shard.pt"].bytes == 10
    (tmp_path / store.RANK_MANIFEST.format(rank=0)).write_text(json.dumps({"shard.pt": {"bytes": 10}}))
    with pytest.raises(ValidationError, match="xxh3_128"):  # a list without the hash is refused where it is read
        store.wait_for_rank_manifests(tmp_path, 1, timeout_s=1)


def test_the_horovod_engine_reads_its_config_as_a_record(tmp_path):
    overrides = ["distributed.backend=horovod", "distributed.zero_stage=0", "distributed.compression=fp16",
                 "train.gradient_accumulation_steps=2", "train.global_batch_size=null", "train.grad_clip=null"]
    record = make_plan(load_recipe(TINY, overrides), make_env(tmp_path)).record()
    config = HorovodConfig.of(record)
    assert (config.compression, config.backward_passes_per_step, config.gradient_clipping) == ("fp16", 2, None)
    assert config.optimizer.betas == (0.9, 0.95) and config.optimizer.lr == 0.002
    renamed = {**record.backend_config, "compresion": "fp16"}
    with pytest.raises(ValidationError, match="compresion"):
        HorovodConfig.model_validate(renamed)


def _run_with_data(root: Path, listed_in_cache: bool) -> RunDir:
    run = RunDir(root / "run")
    write_plan(run.path)
    run.write_file(run.recipe.name, recipe_yaml(load_recipe(TINY).recipe))
    data_dir = root / "data"
    data_dir.mkdir()
    (data_dir / SOURCES).write_text(json.dumps(LISTED))
    data = PreparedData(data_dir, parse_manifest(FIGURES))
    write_data(run, data)
    write_provenance(run, provenance("hash", data, []))
    if not listed_in_cache:
        (data_dir / SOURCES).unlink()
    return run


def test_provenance_holds_the_manifest_and_the_source_files_as_listed(tmp_path):
    run = _run_with_data(tmp_path, listed_in_cache=True)
    assert json.loads(run.provenance.read_text())["data"] == {**FIGURES, "token_dtype": "uint16", "files": LISTED}


@pytest.mark.parametrize("listed_in_cache", [True, False], ids=["from the data cache", "from provenance.json"])
def test_the_source_files_are_typed_wherever_they_are_read(tmp_path, listed_in_cache):
    run = _run_with_data(tmp_path, listed_in_cache)
    if listed_in_cache:
        assert read_sources(tmp_path / "data") == [SourceFile(Path(s["path"]), s["sha256"], s["bytes"]) for s in LISTED]
    report = GateReport.judge([GateResult("quality", "pass", 5.0, 7.5, "val loss 5.0")], {"quality"}, checkpoint="step-00000020",
                              step=20, checkpoint_hash="c0ffee", recipe_hash="hash", evaluated_at=1_700_000_000.0)
    text = "\n".join(technical_documentation(RunRecords.read(run), report, None, datetime(2026, 12, 1, tzinfo=timezone.utc)))
    assert "- source files: 2, 2,003 bytes, each with its sha256:" in text
    assert all(f"| {s['path']} | {s['bytes']:,} | {s['sha256']} |" in text for s in LISTED)
