"""Real multi-process DeepSpeed ZeRO training on CPU (gloo), driven through `orch run`."""

import json
import math
import re
from pathlib import Path

import pytest

from tests.helpers.processes import orch
from tests.helpers.project import FAST
from tests.helpers.mfu import assert_mfu_matches_plan

pytestmark = pytest.mark.distributed

STEPS = 12


def run(tmp_path: Path, *overrides: str, flags: tuple[str, ...] = ()) -> Path:
    run_dir = tmp_path / "run"
    result = orch("run", "recipes/tiny-pretrain.yaml", *FAST, f"train.steps={STEPS}", *overrides, "--run-dir", str(run_dir), *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done:" in result.stdout
    assert "Setting accelerator" not in result.stdout + result.stderr  # DeepSpeed's CPU warning, at every start
    assert re.search(r"^model and engine ready: start-up peaked at [\d.]+ GiB of memory per rank$", result.stderr, re.M), result.stderr  # one line
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_process_zero_training(tmp_path, stage):
    run_dir = run(tmp_path, f"distributed.zero_stage={stage}")
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(l) for l in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["grad_norm"]) for r in rows)
    assert math.isfinite(rows[-1]["val_loss"])
    assert_mfu_matches_plan(run_dir)

    summary = json.loads((run_dir / "summary.json").read_text())
    # Both ranks hold bit-identical full parameters (gathered first under ZeRO-3).
    fingerprints = summary["param_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]

    checkpoint = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    shards = sorted(p.name for p in checkpoint.iterdir())
    assert sum("optim_states" in name for name in shards) == 2, shards
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == checkpoint.name

    ds_config = json.loads((run_dir / "ds_config.json").read_text())
    assert ds_config["zero_optimization"]["stage"] == stage
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["libraries"]["deepspeed"] and provenance["data"]["train_tokens"] > 0
    assert all(len(f["sha256"]) == 64 for f in provenance["data"]["files"])
    assert {"rank-0.log", "rank-1.log"} <= {p.name for p in (run_dir / "logs").iterdir()}
    rank_log = (run_dir / "logs" / "rank-0.log").read_text()
    assert "is deprecated" not in rank_log  # DeepSpeed's use of torch's old collectives, not repeated each step
    assert "Setting accelerator" not in rank_log


def test_dry_run_is_a_single_process(tmp_path):
    run(tmp_path, flags=("--dry-run",))
    assert not (tmp_path / "run").exists()  # a dry run trains beside the real run, never in it
    run_dir = tmp_path / "run-dry-run"
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["topology"]["world_size"] == 1 and plan["dry_run"]
    rows = metrics(run_dir)
    assert len(rows) == 5 and all(math.isfinite(r["loss"]) for r in rows)
    assert len(json.loads((run_dir / "summary.json").read_text())["param_fingerprints"]) == 1


def test_bad_recipe_launches_nothing(tmp_path):
    result = orch("run", "recipes/tiny-pretrain.yaml", *FAST, "train.steps=3", "--run-dir", str(tmp_path / "r"), "model.vocab_size=1000")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "model.vocab_size" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()
