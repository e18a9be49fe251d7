"""Fine-tuning end to end from the released demo model: LoRA fine-tune it on the shipped
instruction set, kill and resume bit-exactly, gate and release; full fine-tuning under ZeRO-3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.processes import kill_run, losses, orch, start_orch, wait_for_rows
from tests.helpers.mfu import assert_mfu_matches_plan

pytestmark = pytest.mark.distributed

LORA = "recipes/tiny-finetune-lora.yaml"
STEPS = 24


def ok(*args: str) -> str:
    result = orch(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def base(demo) -> Path:
    """The released demo model (the default recipe, gated and released): the base every fine-tuning run here starts from."""
    return demo / "release"


def on(base: Path, *overrides: str) -> list[str]:
    return [LORA, f"model.path={base}", f"data.tokenizer.path={base}", f"train.steps={STEPS}", "checkpoint.interval_steps=8", *overrides]


def held_out_loss(run_dir: Path, model_dir: Path) -> float:
    """Response-token loss on the instruction set's held-out part, as prepared for the run."""
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.data.prepare import PreparedData
    from orchestrator.shared.model.inputs import model_inputs

    data = PreparedData.load(Path(json.loads((run_dir / "data.json").read_text())["dir"]))
    rows = {name: np.asarray(array) for name, array in data.instruction_rows("val").items()}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return float(model(**model_inputs(rows, "cpu", torch.float32)).loss)


def test_lora_fine_tuning_resumes_bit_exactly_passes_its_gates_and_beats_the_base(base, tmp_path):
    reference = tmp_path / "reference"
    ok("run", *on(base), "--run-dir", str(reference))

    resumed = tmp_path / "resumed"
    process = start_orch("run", *on(base), "--run-dir", str(resumed))
    wait_for_rows(process, resumed, 12)
    kill_run(resumed)
    process.wait()
    ok("run", *on(base), "--run-dir", str(resumed))
    assert losses(resumed) == losses(reference)  # every per-step loss, to the last bit
    assert losses(reference)[-1][1] < losses(reference)[0][1]
    assert_mfu_matches_plan(resumed)  # the frozen base counted at 4 FLOPs per token, across the kill

    gate = orch("gate", str(resumed))
    assert gate.returncode == 0, gate.stdout
    assert "Loading weights" not in gate.stderr and "Warning" not in gate.stderr, gate.stderr  # a report, not library noise
    release = tmp_path / "release"
    ok("release", str(resumed), "--to", str(release))
    assert (release / "adapter" / "adapter_config.json").is_file() and (release / "adapter" / "adapter_model.safetensors").is_file()
    card = (release / "README.md").read_text()
    assert f"base model: {base}" in card and "release manifest sha256" in card and "LoRA rank 8" in card
    assert held_out_loss(resumed, release) < held_out_loss(resumed, base)


def test_full_fine_tuning_under_zero3_with_two_processes(base, tmp_path):
    run_dir = tmp_path / "run"
    ok("run", *on(base, "model.lora=null", "distributed.zero_stage=3", "train.optimizer.lr=0.002", "train.steps=16"), "--run-dir", str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["final_loss"] < summary["first_loss"] - 0.3
    assert len(set(summary["param_fingerprints"])) == 1
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["topology"]["world_size"] == 2 and json.loads((run_dir / "ds_config.json").read_text())["zero_optimization"]["stage"] == 3


def test_instruction_rows_without_their_fields_are_refused_by_row_number(base, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "no response"}\n{"text": "neither"}\n')
    result = orch("run", *on(base, f"data.path={data}"), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "2 instruction row(s)" in result.stderr and "rows 2, 3" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("lora", ["q_proj", None], ids=["lora", "full"])
def test_fine_tuning_on_horovod(base, tmp_path, lora):
    run_dir = tmp_path / "run"
    adapter = [f"model.lora.target_modules=[{lora}]"] if lora else ["model.lora=null"]
    ok("run", *on(base, "distributed.backend=horovod", "distributed.zero_stage=0", "train.steps=10", *adapter), "--run-dir", str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] and len(set(summary["param_fingerprints"])) == 1
