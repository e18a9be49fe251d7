"""`orch checkpoints` and `orch export` on real 2-process ZeRO runs: the exported Hugging Face model
gives the validation loss the training engine logged, and a corrupt checkpoint is never exported."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.processes import orch
from tests.helpers.project import FAST

pytestmark = pytest.mark.distributed

STEPS = 6
# A checkpoint and an evaluation at step 3 as well as at the end: two checkpoints to choose from.
OVERRIDES = [*FAST, f"train.steps={STEPS}", "checkpoint.interval_steps=3", "train.eval_interval=3"]


@pytest.fixture(scope="module")
def runs(trained_once):
    """Each ZeRO stage trained once, on first use."""
    return lambda stage: trained_once(*OVERRIDES, f"distributed.zero_stage={stage}")


def row(listing: str, tag: str) -> str:
    """The table line of one checkpoint (not the title line, which names `latest` too)."""
    return next(line.rstrip() for line in listing.splitlines() if tag in line and line.lstrip().startswith(("*", "step-")))


def val_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def validation_loss(model, run_dir: Path) -> float:
    """What the Trainer computes: each rank's mean loss over its own validation rows, averaged over ranks."""
    import torch

    from orchestrator.data.prepare import PreparedData
    from orchestrator.shared.data.stream import PackedSequences, validation_indices

    plan = json.loads((run_dir / "plan.json").read_text())
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    data = PreparedData.load(Path(json.loads((run_dir / "data.json").read_text())["dir"]))
    val = PackedSequences(data.tokens("val"), recipe["data"]["seq_len"])
    micro, world = plan["batch"]["micro_batch_size"], plan["topology"]["world_size"]
    per_rank = []
    with torch.no_grad():
        for rank in range(world):
            rows = val.rows(validation_indices(len(val), recipe["train"]["eval_batches"] * micro, world, rank))
            losses = []
            for i in range(0, len(rows), micro):
                ids = torch.from_numpy(rows[i : i + micro])
                losses.append(float(model(input_ids=ids, labels=ids).loss))
            per_rank.append(float(np.mean(losses)))
    return float(np.mean(per_rank))


# ZeRO-0 writes no shards to consolidate: its export takes the module weights DeepSpeed saved whole.
@pytest.mark.parametrize(("stage", "step"), [(2, None), (3, 3), (0, None)])
def test_exported_model_gives_the_engines_validation_loss(runs, tmp_path, stage, step):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = runs(stage)
    args = ["export", str(run_dir)] + (["--step", str(step), "--out", str(tmp_path / "out")] if step else [])
    result = orch(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    expected_step = step or STEPS
    out = tmp_path / "out" if step else run_dir / "export" / f"step-{expected_step:08d}"
    assert f"exported step-{expected_step:08d}" in result.stdout and str(out) in result.stdout

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    assert validation_loss(model, run_dir) == pytest.approx(val_losses(run_dir)[expected_step], rel=1e-4)

    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "def add(a, b):\n    return a + b\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert model.config.eos_token_id == tokenizer.eos_token_id

    record = json.loads((out / "export.json").read_text())
    manifest = json.loads((run_dir / "checkpoints" / f"step-{expected_step:08d}" / "manifest.json").read_text())
    assert record["step"] == expected_step and record["zero_stage"] == stage and record["dtype"] == "fp32"
    assert record["checkpoint_files"] == manifest["files"] and len(record["checkpoint_files_xxh3_128"]) == 32
    assert list(out.glob("*.safetensors"))


def test_listing_flags_a_corrupt_shard_and_export_falls_back(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs(2), run_dir, ignore=shutil.ignore_patterns("export"))  # a moved run finds its own checkpoints

    listing = orch("checkpoints", str(run_dir))
    assert listing.returncode == 0, listing.stderr
    newest, older = row(listing.stdout, "step-00000006"), row(listing.stdout, "step-00000003")
    assert listing.stdout.index(newest) < listing.stdout.index(older)
    assert newest.lstrip().startswith("*") and newest.endswith("  yes") and " 12,288 " in newest
    assert older.endswith("  yes") and " 6,144 " in older

    shard = run_dir / "checkpoints" / "step-00000006" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    listing = orch("checkpoints", str(run_dir)).stdout
    assert row(listing, "step-00000006").endswith("  no: zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its content hash")
    assert row(listing, "step-00000003").endswith("  yes")
    assert "not checked" in orch("checkpoints", str(run_dir), "--no-verify").stdout

    refused = orch("export", str(run_dir), "--step", "6")
    assert refused.returncode == 1 and refused.stderr.startswith("error: step-00000006 does not verify")
    assert len(refused.stderr.strip().splitlines()) == 1

    fallback = orch("export", str(run_dir))
    assert fallback.returncode == 0, fallback.stderr
    assert "exported step-00000003" in fallback.stdout
    assert json.loads((run_dir / "export" / "step-00000003" / "export.json").read_text())["step"] == 3


def test_export_without_checkpoints_is_one_error_line(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs(2), run_dir, ignore=shutil.ignore_patterns("checkpoints", "export"))
    for args in (("export", str(run_dir)), ("checkpoints", str(run_dir)), ("export", str(tmp_path / "missing"))):
        result = orch(*args)
        assert result.returncode == 1, result.stdout
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (run_dir / "export").exists()
