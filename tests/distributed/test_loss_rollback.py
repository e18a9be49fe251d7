"""A bad loss is rolled back, not trained on: a NaN or a spike injected once (`ORCH_INJECT_FAULTS`)
sends the ranks back to the newest checkpoint (or, before the first, to the start) and the run ends
bit-exact; one that comes back at the same data position stops the run, naming that position."""

import json
from pathlib import Path

import pytest

from orchestrator.errors import EXIT_NAN
from orchestrator.rundir.layout import RunDir
from orchestrator.shared.checkpoint import store
from tests.helpers.processes import losses, orch
from tests.helpers.project import SHORT_RUN

pytestmark = pytest.mark.distributed

BASE = ["recipes/tiny-pretrain.yaml", *SHORT_RUN]


def run(run_dir: Path, *overrides: str):
    return orch("run", *BASE, *overrides, "--run-dir", str(run_dir))


def printed(result) -> str:
    """What `orch run` printed, its lines unwrapped (the live view wraps them to the terminal's width)."""
    return " ".join((result.stdout + result.stderr).split())


def of_kind(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in RunDir(run_dir).history() if e["event"] == kind]


def test_a_bad_loss_once_rolls_back_and_the_run_stays_bit_exact(tmp_path, monkeypatch, uninterrupted):
    """Step 2's NaN comes before any checkpoint (the ranks start over from a rebuilt engine), step 6's
    after the one at step 4, and step 7's loss 100 times its size on rank 1 is a spike past 3 x the
    median; each fires once, so the replay passes and every loss matches a run that met none, to the
    last bit."""
    reference = uninterrupted()
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "nan@2,nan@6:rank1,spike@7:rank1")
    faulty = tmp_path / "faulty"
    result = run(faulty, "fault_tolerance.max_loss_spike=3")

    assert result.returncode == 0, result.stdout + result.stderr
    assert losses(faulty) == losses(reference)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (reference, faulty)]
    assert summaries[0]["param_fingerprints"] == summaries[1]["param_fingerprints"]
    rolled = of_kind(faulty, "loss_rolled_back")
    assert [(e["step"], e["checkpoint_step"]) for e in rolled] == [(2, 0), (6, 4), (7, 4)]
    assert [e["problem"] for e in rolled[:2]] == ["non-finite", "non-finite"]
    assert rolled[2]["loss"] > 300 and rolled[2]["problem"].endswith("the median of the last 6 steps")
    assert rolled[1]["data_position"] == "samples 80-95 of the training stream (epoch 0)"
    assert "(samples 80-95 of the training stream (epoch 0)): rolled back to step 4" in printed(result)


def test_a_nan_at_the_same_data_position_again_stops_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "nan@6:always")
    run_dir = tmp_path / "run"
    result = run(run_dir)

    assert result.returncode != 0
    assert "(samples 80-95 of the training stream (epoch 0)) again after rolling back to step 4: training stopped" in printed(result)
    (stopped,) = of_kind(run_dir, "loss_not_recovered")
    assert stopped["step"] == 6 and stopped["rolled_back_to"] == 4
    assert stopped["data_position"] == "samples 80-95 of the training stream (epoch 0)"
    assert f"failed (exit {EXIT_NAN})" in RunDir(run_dir).launcher_log.read_text()  # the ranks' own code for it
    newest = store.find_resumable(run_dir / "checkpoints", [])
    assert newest is not None and newest.name == store.tag_for(4)  # the last checkpoint is intact, and still the newest
    assert [step for step, _ in losses(run_dir)] == [1, 2, 3, 4, 5]  # nothing past the bad step was logged
