"""A prepared directory's `manifest.json` and the run's `data.json` as records: text and instruction
manifests are written as preparation always wrote them (keys and order), read back as their kind,
and a `data.json` written by the previous main (or an older, shorter one) reads and is written the same."""

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.shared.data.prepared import (InstructionManifest, PreparedData, TextManifest, parse_manifest, read_manifest,
                                        write_manifest)
from orchestrator.errors import DamagedRun
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_data, write_data

WRITTEN_BY_D92F83D = Path(__file__).parent / "run_fixtures" / "written-by-d92f83d"

SOURCE = {"name": "code", "weight": 3.0, "documents": {"train": 9, "val": 1}, "train_tokens": 900, "val_tokens": 80,
          "curation": {"read": 11, "kept": 10, "exact_duplicates": 1},
          "shards": {"train": ["sources/code/train-00000"], "val": ["sources/code/val-00000"]}}
TEXT = {"format": 4, "documents": {"train": 9, "val": 1}, "train_tokens": 900, "val_tokens": 80, "vocab_size": 300,
        "token_dtype": "uint16", "curation": {"read": 11, "kept": 10, "exact_duplicates": 1}, "sources": [SOURCE],
        "canaries": ["a secret"], "seconds": {"workers": 2, "curate": 0.5, "tokenizer": 1.25, "tokenize": 0.125}}
"""As `_build` wrote it before the record: its keys in its order."""
INSTRUCTION = {"kind": "instruction", "documents": {"train": 4, "val": 1},
               "instruction": {split: {"examples": n, "rows": 1, "tokens": 50 * n, "response_tokens": 20 * n} for split, n in (("train", 4), ("val", 1))},
               "truncated_examples": 0, "train_tokens": 200, "val_tokens": 50, "vocab_size": 70000, "token_dtype": "uint32",
               "seq_len": 128, "packing": True, "canaries": []}
"""As `_build_instruction` wrote it before the record."""


@pytest.mark.parametrize("content, kind", [(TEXT, TextManifest), (INSTRUCTION, InstructionManifest)])
def test_a_manifest_round_trips_as_its_kind_and_is_written_as_before(tmp_path, content, kind):
    manifest = parse_manifest(content)
    assert isinstance(manifest, kind)
    write_manifest(tmp_path, manifest)
    assert (tmp_path / "manifest.json").read_text() == json.dumps(content, indent=1)
    assert read_manifest(tmp_path) == manifest


def test_prepared_data_reads_its_shards_from_the_manifest(tmp_path):
    write_manifest(tmp_path, parse_manifest(TEXT))
    data = PreparedData.load(tmp_path)
    assert (data.kind, data.weights, data.vocab_size, data.tokenizer_dir) == ("text", [3.0], 300, tmp_path / "tokenizer")
    assert [s.name for s in data.sources] == ["code"]
    instruction = PreparedData(tmp_path, parse_manifest(INSTRUCTION))
    assert (instruction.kind, instruction.sources, instruction.manifest.instruction["val"].examples) == ("instruction", [], 1)


def test_an_unknown_kind_or_a_missing_figure_is_refused():
    with pytest.raises(ValueError, match="tag"):
        parse_manifest({**INSTRUCTION, "kind": "images"})
    with pytest.raises(ValueError, match="train_tokens"):
        parse_manifest({k: v for k, v in TEXT.items() if k != "train_tokens"})


def test_data_json_holds_the_directory_beside_the_manifest_and_is_written_as_before(tmp_path):
    run = RunDir(tmp_path / "run")
    write_data(run, PreparedData(tmp_path / "data", parse_manifest(TEXT)))
    written = json.loads(run.data.read_text())
    assert list(written) == ["dir", "vocab_size", "train_tokens", "val_tokens", "canaries", "format", "documents",
                             "token_dtype", "curation", "sources", "seconds"]
    record = read_data(run)
    assert record.manifest == parse_manifest(TEXT)
    assert record.prepared == PreparedData(tmp_path / "data", parse_manifest(TEXT))


def test_data_json_written_by_the_previous_main_reads_and_is_written_the_same(tmp_path):
    shutil.copy(WRITTEN_BY_D92F83D / "data.json", tmp_path / "data.json")
    record = read_data(RunDir(tmp_path))
    assert isinstance(record.manifest, TextManifest) and record.manifest.format == 3
    assert record.prepared.tokenizer_dir == Path("/root/.cache/orchestrator/data/73323b154d52eb59/tokenizer")
    assert [s.shards["train"] for s in record.manifest.sources] == [["sources/python-stdlib/train-00000"]]
    assert record.model_dump_json(indent=2) == (WRITTEN_BY_D92F83D / "data.json").read_text()


def test_an_older_shorter_data_json_reads_and_keeps_its_keys(tmp_path):
    """Before formats, sources and timings were recorded: the figures alone (the dtype by preparation's rule)."""
    run = RunDir(tmp_path)
    run.data.write_text(json.dumps({"dir": "/data/old", "vocab_size": 70000, "train_tokens": 10, "val_tokens": 2}))
    record = read_data(run)
    assert (record.manifest.token_dtype, record.manifest.sources, record.manifest.canaries) == ("uint32", [], [])
    assert list(json.loads(record.model_dump_json())) == ["dir", "vocab_size", "train_tokens", "val_tokens", "token_dtype"]


def test_a_damaged_data_json_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    run.data.write_text(json.dumps({"dir": "/data/x", "vocab_size": 300, "val_tokens": 2}))
    with pytest.raises(DamagedRun, match=r"data\.json.*train_tokens"):
        read_data(run)
