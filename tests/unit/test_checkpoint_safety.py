"""A checkpoint someone hands over must not run code: rank states are JSON, DeepSpeed's pickles are
only opened after the checkpoint verifies against its manifest, and a ZeRO-0 module file is loaded
as tensors only."""

import json
import random

import numpy as np
import pytest
import torch

from launch import rank_state
from orchestrator.backends.deepspeed import MODULE_STATES, DeepSpeedBackend
from orchestrator.shared.checkpoint import store
from orchestrator.errors import CheckpointError
from orchestrator.shared.data.stream import StreamPosition


class Payload:
    """Unpickling this creates `marker`: the proof that a load ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def commit(root, step, files: dict[str, object]):
    """A committed checkpoint holding `files` (name -> bytes, or an object torch.save writes)."""
    staging = root / f"{store.STAGING_PREFIX}{store.tag_for(step)}"
    staging.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (staging / name).write_bytes(content)
        else:
            torch.save(content, staging / name)
    return store.commit(root, staging, step, store.describe_files(staging, sorted(files)), {"world_size": 1})


def test_rank_state_round_trips_every_generator_bit_for_bit(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rank_state.capture(7, StreamPosition(consumed_samples=56, seed=0, num_sequences=100))
    rank_state.write(tmp_path, 0, state)
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restored = rank_state.read(tmp_path, 0)
    rank_state.restore_rng(restored)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected
    assert restored.step == 7 and restored.data.consumed_samples == 56
    assert json.loads((tmp_path / "rank-0.json").read_text())["data"] == {"consumed_samples": 56, "seed": 0, "num_sequences": 100}


@pytest.mark.parametrize("name", ["rank-0.pt", "rank-0.json"])
def test_a_pickled_rank_state_is_refused_without_running_it(tmp_path, name):
    marker = tmp_path / "ran"
    torch.save({"step": 1, "data": {}, "rng": Payload(marker)}, tmp_path / name)
    with pytest.raises(rank_state.MissingRankState, match="start fresh with --fresh"):
        rank_state.read(tmp_path, 0)
    assert not marker.exists()


def test_a_zero0_module_file_carrying_code_is_refused_though_it_verifies(tmp_path):
    marker = tmp_path / "ran"
    checkpoint = commit(tmp_path / "ckpt", 4, {MODULE_STATES: {"module": {"w": torch.zeros(2)}, "extra": Payload(marker)}})
    assert store.verify(checkpoint).ok
    with pytest.raises(CheckpointError, match="holds more than tensors"):
        DeepSpeedBackend().consolidated_state_dict(checkpoint.parent, checkpoint.name, zero_stage=0)
    assert not marker.exists()


def test_a_zero0_module_file_of_tensors_loads(tmp_path):
    checkpoint = commit(tmp_path / "ckpt", 4, {MODULE_STATES: {"module": {"w": torch.ones(2, dtype=torch.bfloat16)}, "ds_version": "0"}})
    state, _ = DeepSpeedBackend().consolidated_state_dict(checkpoint.parent, checkpoint.name, zero_stage=0)
    assert state["w"].dtype == torch.float32 and state["w"].tolist() == [1.0, 1.0]


SHARD = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.mark.parametrize("tamper", ["replaced", "added", "linked"])
def test_a_shard_that_does_not_match_the_manifest_is_never_unpickled(tmp_path, tamper):
    marker = tmp_path / "ran"
    checkpoint = commit(tmp_path / "ckpt", 4, {MODULE_STATES: {"module": {}}, SHARD: {"optimizer_state_dict": {}}})
    payload = tmp_path / "payload.pt"
    torch.save({"optimizer_state_dict": Payload(marker)}, payload)
    if tamper == "replaced":
        (checkpoint / SHARD).write_bytes(payload.read_bytes())
    elif tamper == "added":
        (checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(payload.read_bytes())
    else:
        (checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt").symlink_to(payload)
    with pytest.raises(CheckpointError, match="does not verify"):
        DeepSpeedBackend().consolidated_state_dict(checkpoint.parent, checkpoint.name, zero_stage=2)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.pt"])
def test_a_manifest_naming_files_outside_its_checkpoint_does_not_verify(tmp_path, name):
    checkpoint = commit(tmp_path / "ckpt", 4, {"a.pt": b"x"})
    manifest = json.loads((checkpoint / store.MANIFEST).read_text())
    manifest["files"][name] = manifest["files"]["a.pt"]
    (checkpoint / store.MANIFEST).write_text(json.dumps(manifest))
    verdict = store.verify(checkpoint)
    assert not verdict.ok and "not a path inside the checkpoint" in verdict.reason
