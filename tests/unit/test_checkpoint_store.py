"""Checkpoint store on plain files: commit, verify, resume scan, set-aside and retention."""

import json
import os

import pytest

from orchestrator.shared.checkpoint import store
from orchestrator.shared.checkpoint.compat import recipe_changes
from launch.engines.deepspeed import shard_owner as owner_of
from tests.helpers.hostile_files import deep_chain, fifo_unblocked


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
    assert manifest.step == 4 and manifest.files["shard.pt"].bytes == 8
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


# -- what verification refuses beside a checkpoint's listed files --------------------------------------

SHARD = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
"""Named as DeepSpeed globs for its shards: whatever is there gets opened by the load."""


def test_a_fifo_named_like_a_shard_fails_verification_and_export_refuses_it(tmp_path):
    from orchestrator.checkpoint.export import choose_checkpoint
    from orchestrator.errors import CheckpointError

    checkpoint = make_checkpoint(tmp_path, 4)
    os.mkfifo(checkpoint / SHARD)
    verdict = store.verify(checkpoint)
    assert not verdict.ok and verdict.reason == f"{SHARD}: not a regular file (a FIFO)"
    with pytest.raises(CheckpointError, match="no checkpoint in .* verifies"):
        choose_checkpoint(tmp_path, None)


def test_an_empty_directory_named_like_a_shard_fails_verification(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 4)
    (checkpoint / SHARD).mkdir()
    verdict = store.verify(checkpoint)
    assert not verdict.ok and verdict.reason == f"{SHARD}/: an empty directory, not in the manifest"


@pytest.mark.parametrize("swapped", ["shard.pt", store.MANIFEST])
def test_a_file_swapped_for_a_fifo_after_the_walk_is_refused_when_opened(tmp_path, monkeypatch, swapped):
    checkpoint = make_checkpoint(tmp_path, 4)
    walked = store.walk(checkpoint)  # the tree as the walk saw it, before the swap
    (checkpoint / swapped).unlink()
    os.mkfifo(checkpoint / swapped)
    monkeypatch.setattr(store, "walk", lambda path: walked)
    with fifo_unblocked(checkpoint / swapped):
        verdict = store.verify(checkpoint)
    expected = "unreadable manifest: not a regular file (a FIFO)" if swapped == store.MANIFEST else "shard.pt: not a regular file (a FIFO)"
    assert not verdict.ok and verdict.reason == expected


def test_a_listed_file_with_a_second_name_fails_verification(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 4)
    os.link(checkpoint / "shard.pt", tmp_path / "outside.pt")  # written there, the checkpoint's file changes
    verdict = store.verify(checkpoint)
    assert not verdict.ok and verdict.reason.startswith("shard.pt: a hard link (one file under 2 names")


def test_a_tree_deeper_than_the_recursion_limit_fails_verification(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 4)
    with deep_chain(checkpoint / "deep"):
        verdict = store.verify(checkpoint)
    assert not verdict.ok and verdict.reason.endswith(": a directory more than 32 levels deep")


def test_a_file_name_cannot_forge_a_line_of_the_verdict(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 4)
    (checkpoint / "x\nstep-00000004 verified").write_bytes(b"x")
    verdict = store.verify(checkpoint)
    assert not verdict.ok and verdict.reason == "'x\\nstep-00000004 verified' is not in the manifest"


@pytest.mark.parametrize("files", [[], {"shard.pt": 8}, {"shard.pt": {"bytes": "8", "xxh3_128": "0"}}])
def test_a_manifest_whose_files_are_not_entries_does_not_verify(tmp_path, files):
    checkpoint = make_checkpoint(tmp_path, 4)
    manifest = json.loads((checkpoint / store.MANIFEST).read_text())
    (checkpoint / store.MANIFEST).write_text(json.dumps({**manifest, "files": files}))
    verdict = store.verify(checkpoint)
    assert not verdict.ok and verdict.reason.startswith("unreadable manifest: ")


def test_setting_aside_never_writes_through_a_link_the_checkpoint_holds(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's file\n")
    root = tmp_path / "ckpt"
    make_checkpoint(root, 4)
    (root / "step-00000004" / store.REASON_FILE).symlink_to(outside)
    events = []
    assert store.find_resumable(root, events) is None
    (aside,) = (root / store.SET_ASIDE).iterdir()
    assert outside.read_text() == "the user's file\n"
    assert (aside / store.REASON_FILE).read_text() == f"{store.REASON_FILE} is a symbolic link\n" == events[0]["reason"] + "\n"
