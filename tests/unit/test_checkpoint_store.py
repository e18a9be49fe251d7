"""Checkpoint store on plain files: commit, verify, resume scan, set-aside and retention."""

import json

import pytest

from orchestrator.checkpoint import store
from orchestrator.checkpoint.compat import recipe_changes
from launch.engines.deepspeed import shard_owner as owner_of


def stage(root, step, payload=b"weights"):
    staging = root / f"{store.STAGING_PREFIX}{store.tag_for(step)}"
    staging.mkdir(parents=True)
    (staging / "shard.pt").write_bytes(payload + bytes([step]))
    return staging


def make_checkpoint(root, step):
    staging = stage(root, step)
    files = store.describe_files(staging, ["shard.pt"])
    return store.commit(root, staging, step, files, {"world_size": 2})


def test_commit_is_visible_only_complete(tmp_path):
    path = make_checkpoint(tmp_path, 4)
    assert path.name == "step-00000004" and not list(tmp_path.glob(".staging-*"))
    assert (tmp_path / "latest").read_text() == "step-00000004"
    manifest = store.read_manifest(path)
    assert manifest["step"] == 4 and manifest["files"]["shard.pt"]["bytes"] == 8
    assert store.verify(path).ok


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_checkpoint_is_set_aside_and_older_one_used(tmp_path, damage):
    make_checkpoint(tmp_path, 4)
    newest = make_checkpoint(tmp_path, 8)
    shard = newest / "shard.pt"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[0] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:3])
    elif damage == "delete":
        shard.unlink()
    else:
        (newest / store.MANIFEST).unlink()
    events = []
    assert store.find_resumable(tmp_path, events).name == "step-00000004"
    (event,) = events
    assert event["event"] == "checkpoint_set_aside"
    aside = list((tmp_path / store.SET_ASIDE).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("step-00000008")
    assert (aside[0] / "SET_ASIDE_REASON").read_text().strip() == event["reason"]


def test_partial_save_is_set_aside_not_resumed(tmp_path):
    make_checkpoint(tmp_path, 4)
    stage(tmp_path, 8)
    events = []
    assert store.find_resumable(tmp_path, events).name == "step-00000004"
    assert "partial save" in events[0]["reason"]


def test_latest_is_only_a_hint(tmp_path):
    make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 8)
    (tmp_path / "latest").write_text("step-00000004")
    assert store.find_resumable(tmp_path, []).name == "step-00000008"


def test_nothing_to_resume(tmp_path):
    assert store.find_resumable(tmp_path / "absent", []) is None


def test_retention_keeps_last_and_every_mth(tmp_path):
    for step in range(1, 11):
        newest = make_checkpoint(tmp_path, step)
        store.prune(tmp_path, keep_last=2, keep_every=4, protect=newest)
    assert [p.name for p in store.committed(tmp_path)] == ["step-00000010", "step-00000009", "step-00000008", "step-00000004"]


def test_retention_never_deletes_the_protected_checkpoint(tmp_path):
    newest = make_checkpoint(tmp_path, 3)
    (tmp_path / "step-00000009").mkdir()  # a newer, uncommitted-looking directory
    store.prune(tmp_path, keep_last=1, keep_every=None, protect=newest)
    assert newest.exists()


def test_rank_rank_ownership_of_files():
    assert owner_of("zero_pp_rank_3_mp_rank_00_optim_states.pt") == 3
    assert owner_of("bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt") == 1
    assert owner_of("mp_rank_00_model_states.pt") == 0
    assert owner_of("rank-5.json") == 5
    assert owner_of("metrics.jsonl") == 0


def test_recipe_changes_split_safe_and_unsafe():
    saved = {"name": "a", "model": {"hidden_size": 128}, "train": {"steps": 10, "micro_batch_size": 8, "optimizer": {"lr": 1.0}}}
    current = json.loads(json.dumps(saved))
    current["train"]["steps"] = 20
    current["train"]["optimizer"]["lr"] = 0.5
    assert recipe_changes(saved, current) == ([], ["train.optimizer.lr: 1.0 -> 0.5", "train.steps: 10 -> 20"])
    current["model"]["hidden_size"] = 256
    unsafe, _ = recipe_changes(saved, current)
    assert unsafe == ["model.hidden_size: 128 -> 256"]


def test_world_layout_may_change_for_an_elastic_resume():
    saved = {"distributed": {"procs_per_node": 2, "zero_stage": 2}, "train": {"global_batch_size": 16}}
    current = {"distributed": {"procs_per_node": 1, "zero_stage": 2}, "train": {"global_batch_size": 16}}
    assert recipe_changes(saved, current)[0] == ["distributed.procs_per_node: 2 -> 1"]
    assert recipe_changes(saved, current, ignore_world_layout=True) == ([], ["distributed.procs_per_node: 2 -> 1"])
    current["distributed"]["zero_stage"] = 3
    assert recipe_changes(saved, current, ignore_world_layout=True)[0] == ["distributed.zero_stage: 2 -> 3"]
