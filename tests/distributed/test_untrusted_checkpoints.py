"""A checkpoint handed over from elsewhere, with a manifest that matches its files, must not run code
on `orch run` (resume), `orch export` or `orch gate`: its rank states are not pickles, and the one
DeepSpeed file loaded outside the engine is read as tensors only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from orchestrator.backends.deepspeed import MODULE_STATES
from orchestrator.shared.checkpoint import store
from orchestrator.rundir.layout import RANK_STATE
from tests.helpers.processes import orch
from tests.helpers.project import FAST

pytestmark = pytest.mark.distributed

RUN = ["recipes/tiny-pretrain.yaml", *FAST, "train.steps=3", "checkpoint.interval_steps=3", "distributed.zero_stage=0"]


class Payload:
    """Unpickling this creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("handed") / "run"
    result = orch("run", *RUN, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def hand_over(trained: Path, tmp_path: Path, name: str, content) -> tuple[Path, Path]:
    """A copy of the run whose checkpoint's `name` is `content` (torch-saved), its manifest entry
    rewritten to match, as a forger would; returns (run dir, marker)."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    checkpoint = run_dir / "checkpoints" / store.tag_for(3)
    torch.save(content, checkpoint / name)
    manifest = json.loads((checkpoint / store.MANIFEST).read_text())
    manifest["files"].update(store.describe_files(checkpoint, [name]))
    (checkpoint / store.MANIFEST).write_text(json.dumps(manifest))
    assert store.verify(checkpoint).ok
    return run_dir, tmp_path / "ran"


def test_a_pickled_rank_state_is_not_run_on_resume(trained, tmp_path):
    run_dir, marker = hand_over(trained, tmp_path, RANK_STATE.format(rank=0), {"step": 3, "data": {}, "rng": Payload(tmp_path / "ran")})
    result = orch("run", *RUN, "train.steps=6", "--run-dir", str(run_dir))
    assert not marker.exists()
    assert result.returncode != 0 and "start fresh with --fresh" in (run_dir / "logs" / "rank-0.log").read_text()


@pytest.mark.parametrize("command", ["export", "gate"])
def test_module_weights_carrying_code_are_not_run_on_export_or_gate(trained, tmp_path, command):
    saved = torch.load(trained / "checkpoints" / store.tag_for(3) / MODULE_STATES, weights_only=True)
    run_dir, marker = hand_over(trained, tmp_path, MODULE_STATES, {**saved, "extra": Payload(tmp_path / "ran")})
    result = orch(command, str(run_dir))
    assert not marker.exists()
    assert result.returncode == 1 and "holds more than tensors" in result.stderr and "Traceback" not in result.stderr
