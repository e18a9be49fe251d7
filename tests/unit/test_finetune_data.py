"""Fine-tuning inputs: base model checks, instruction rows, prompt masking, packing that never lets
attention cross examples."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from orchestrator.data.instruct import IGNORE, pack, read_examples, tokenize
from orchestrator.data.spec import InstructionSpec
from orchestrator.errors import DataError, RecipeError
from orchestrator.release.annex import Compute
from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.shared.model.inputs import model_inputs
from tests.helpers.planning import make_env
from tests.helpers.project import RECIPES

FINETUNE = RECIPES / "tiny-finetune-lora.yaml"


def plan_for(tmp_path, base, *overrides):
    return make_plan(load_recipe(FINETUNE, [f"model.path={base}", f"data.tokenizer.path={base}", *overrides]), make_env(tmp_path))


def test_the_plan_takes_architecture_and_sizes_from_the_base_model(tmp_path, tiny_base):
    plan = plan_for(tmp_path, tiny_base)
    assert plan.arch == "llama" and plan.sizes.hidden_size == 64 and plan.sizes.num_layers == 2
    assert plan.record().model.base == str(tiny_base)


def test_base_model_problems_are_one_line_each(tmp_path, tiny_base):
    not_lm = tmp_path / "not-lm"
    shutil.copytree(tiny_base, not_lm)
    config = json.loads((not_lm / "config.json").read_text())
    (not_lm / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(RecipeError, match="is not a causal language model"):
        plan_for(tmp_path, not_lm)
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_base, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(RecipeError, match="has no tokenizer files"):
        make_plan(load_recipe(FINETUNE, [f"model.path={no_tokenizer}", f"data.tokenizer.path={tiny_base}"]), make_env(tmp_path))
    with pytest.raises(RecipeError, match="path does not exist"):
        load_recipe(FINETUNE, [f"model.path={tmp_path / 'absent'}", f"data.tokenizer.path={tiny_base}"])


def test_lora_targets_that_do_not_exist_are_named_with_the_ones_that_do(tmp_path, tiny_base):
    with pytest.raises(RecipeError) as error:
        plan_for(tmp_path, tiny_base, "model.lora.target_modules=[q_proj, query]")
    assert "model.lora.target_modules: query not in this llama model; it has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in str(error.value)


def test_rows_without_the_fields_are_reported_by_number():
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "only"}, {"messages": [{"role": "user", "content": "x"}]}, {"text": "t"}]
    with pytest.raises(DataError, match="3 instruction row\\(s\\).*rows 2, 3, 4"):
        read_examples(rows, InstructionSpec())


@pytest.fixture(scope="module")
def batch(tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    rows = [json.loads(line) for line in (RECIPES / "data" / "instructions.jsonl").read_text().splitlines()[:12]]
    pairs = tokenize(read_examples(rows, InstructionSpec()), tokenizer, InstructionSpec())
    return pairs, pack(pairs, 256, True, tokenizer.eos_token_id)


def test_prompt_tokens_carry_no_loss_and_packing_keeps_whole_examples(batch):
    pairs, packed = batch
    assert len(packed["input_ids"]) < len(pairs)  # several examples per row
    for ids, labels in pairs:
        prompt = sum(label == IGNORE for label in labels)
        assert 0 < prompt < len(ids) and labels[prompt:] == ids[prompt:]  # the response (and end-of-text) is the target
    row_segments = packed["segments"][0]
    first = np.flatnonzero(row_segments == 1)
    assert (packed["labels"][0][first] == np.array(pairs[0][1])).all()


def test_the_loss_over_prompt_tokens_contributes_nothing(batch, tiny_base):
    import torch
    from transformers import AutoModelForCausalLM

    _, packed = batch
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    rows = {k: v[:2] for k, v in packed.items()}
    inputs = model_inputs(rows, "cpu", torch.float32)
    out = model(**inputs)
    out.logits.retain_grad()
    out.loss.backward()
    logits, targets = out.logits[:, :-1].detach(), inputs["labels"][:, 1:]
    response = targets != IGNORE
    by_hand = torch.nn.functional.cross_entropy(logits[response], targets[response])
    assert float(out.loss) == pytest.approx(float(by_hand), rel=1e-5)
    gradient = out.logits.grad[:, :-1].abs().sum(dim=-1)
    assert (gradient[~response] == 0).all()  # positions predicting prompt (or padding) tokens get no gradient at all
    assert (gradient[response] > 0).all()


def test_packed_examples_do_not_see_each_other(batch, tiny_base):
    import torch
    from transformers import AutoModelForCausalLM

    pairs, packed = batch
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    row = {k: v[:1] for k, v in packed.items()}
    with torch.no_grad():
        together = model(**model_inputs(row, "cpu", torch.float32)).logits[0]
        for segment in (1, 2):
            positions = np.flatnonzero(row["segments"][0] == segment)
            alone = model(input_ids=torch.as_tensor(row["input_ids"][:, positions])).logits[0]
            assert torch.allclose(together[positions], alone, atol=1e-5)


def test_a_chat_template_formats_examples_when_the_tokenizer_has_one(tiny_base):
    from transformers import AutoTokenizer

    from orchestrator.data.instruct import Example, render

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}" \
                              "{% if add_generation_prompt %}<assistant>{% endif %}"
    prompt, response = render(Example("add 2 and 3", "5"), tokenizer, InstructionSpec())
    assert prompt == "<user>add 2 and 3</user><assistant>" and response == "5</assistant>"
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render(chat, tokenizer, InstructionSpec()) == ("<system>be brief</system><user>hi</user><assistant>", "hello</assistant>")


def test_without_packing_each_example_has_its_own_padded_row(batch):
    pairs, _ = batch
    rows = pack(pairs[:3], 256, False, pad_id=0)
    assert len(rows["input_ids"]) == 3
    for row, (ids, _) in zip(rows["segments"], pairs[:3]):
        assert (row[: len(ids)] == 1).all() and (row[len(ids):] == 0).all()
    assert (rows["labels"][0][len(pairs[0][0]):] == IGNORE).all()


def test_the_plan_counts_gradients_and_optimizer_state_for_the_adapters_alone(tmp_path, tiny_base):
    lora = plan_for(tmp_path, tiny_base, "model.lora.target_modules=[q_proj, v_proj]", "model.lora.rank=4")
    full = plan_for(tmp_path, tiny_base, "model.lora=null")
    h, layers = 64, 2
    adapters = layers * 4 * ((h + h) + (h + h))  # rank x (in + out) for q_proj and v_proj of each layer
    assert lora.num_params == full.num_params + adapters
    assert lora.memory.grads_bytes == adapters * 4 / 2  # fp32 gradients, ZeRO-2 over 2 ranks
    # fp32 master copy, momentum and variance: ZeRO keeps its own fp32 copy even of fp32 weights
    assert lora.memory.optimizer_bytes == adapters * 12 / 2
    assert full.memory.optimizer_bytes == full.num_params * 12 / 2


def test_lora_compute_counts_no_weight_gradients_for_the_frozen_base(tmp_path, tiny_base):
    """The frozen base's weights take their forward and input-gradient matmuls (4 FLOPs per token
    each), the adapters all three (6), the base's untied input embedding none (a lookup): the figure
    MFU divides by and the model card documents."""
    lora = plan_for(tmp_path, tiny_base, "model.lora.target_modules=[q_proj, v_proj]", "model.lora.rank=4").record()
    full = plan_for(tmp_path, tiny_base, "model.lora=null").record()
    adapters = lora.model.num_params - full.model.num_params
    attention = 12 * 2 * 64 * lora.batch.seq_len  # layers x hidden x sequence
    embedding = 400 * 64  # vocabulary x hidden: the base does not tie its output projection to it
    assert not full.model.sizes.tie_embeddings and full.model.sizes.vocab_size == 400
    assert lora.model.frozen_params == full.model.num_params and full.model.frozen_params == 0
    assert lora.estimate.flops_per_token == 6 * adapters + 4 * (full.model.num_params - embedding) + attention
    assert full.estimate.flops_per_token == 6 * (full.model.num_params - embedding) + attention
    compute = Compute.of(lora, steps=10)
    assert compute.formula_holds and compute.flops == lora.estimate.flops_per_token * 10 * lora.batch.tokens_per_step
    assert compute.dense_terms == f"6 x {adapters:,} + 4 x {full.model.num_params - embedding:,}" and "4 x frozen parameters" in compute.formula
    assert compute.dense_per_token + compute.attention_per_token == lora.estimate.flops_per_token
