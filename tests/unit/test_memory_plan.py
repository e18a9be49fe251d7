"""What the plan says about memory for models larger than one rank: activation checkpointing, host
memory at start-up (whole replicas against partitioned construction), offload, and bases of any
architecture counted on the meta device."""

import json
import shutil

import pytest

from orchestrator.errors import RecipeError
from orchestrator.plan.planner import make_plan
from orchestrator.plan.render import render_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.records import plan_json
from tests.helpers.planning import H100, make_env
from tests.helpers.project import TINY

SEVEN_B = ["model.hidden_size=4096", "model.num_layers=32", "model.num_heads=32", "model.num_kv_heads=32",
           "model.intermediate_size=11008", "distributed.procs_per_node=8", "train.global_batch_size=64"]
GiB = 2**30


def plan_for(tmp_path, *overrides, **env):
    return make_plan(load_recipe(TINY, list(overrides)), make_env(tmp_path, **env))


def test_activation_checkpointing_lowers_the_estimate_and_the_plan_shows_both(tmp_path):
    long = ["data.seq_len=2048", "model.max_position_embeddings=2048", "model.num_layers=12", "train.micro_batch_size=4", "train.global_batch_size=8"]
    off, on = plan_for(tmp_path, *long), plan_for(tmp_path, *long, "train.activation_checkpointing=true")
    assert on.memory.activations_bytes < off.memory.activations_bytes / 2
    assert (on.memory.activations_other_bytes, off.memory.activations_other_bytes) == (off.memory.activations_bytes, on.memory.activations_bytes)
    text = render_plan(off)
    assert "without activation checkpointing" in text and "(train.activation_checkpointing: true)" in text
    assert json.loads(plan_json(on.record()))["memory_per_device"]["activations_bytes"] == on.memory.activations_bytes


def test_whole_replicas_at_start_up_are_flagged_with_the_fix(tmp_path):
    plan = plan_for(tmp_path, *SEVEN_B, "distributed.zero_stage=2")
    host = plan.host_memory
    assert not host.partitioned and host.construction_bytes == plan.num_params * 4  # fp32, whole, on every rank
    assert host.per_node_bytes == 8 * plan.num_params * 4
    (warning,) = [w for w in plan.warnings if w.startswith("start-up")]
    assert "8 ranks x" in warning and "the whole model" in warning and "distributed.zero_stage: 3" in warning
    assert "WILL NOT FIT" in next(line for line in render_plan(plan).splitlines() if line.startswith("host/node"))


def test_partitioned_construction_holds_a_partition_and_one_layer(tmp_path):
    plan = plan_for(tmp_path, *SEVEN_B, "distributed.zero_stage=3", "train.precision=bf16")
    largest = plan.sizes.hidden_size * plan.sizes.intermediate_size
    assert plan.host_memory.partitioned
    assert plan.host_memory.construction_bytes == (plan.num_params // 8 + largest) * 2
    unpartitioned = plan_for(tmp_path, *SEVEN_B, "distributed.zero_stage=3", "train.precision=bf16", "distributed.zero3_init=false")
    assert unpartitioned.host_memory.construction_bytes == plan.num_params * 2
    (warning,) = [w for w in unpartitioned.warnings if w.startswith("start-up")]
    assert "distributed.zero3_init: true" in warning
    assert json.loads(plan_json(plan.record()))["host_memory_per_node"]["per_node_bytes"] == plan.host_memory.per_node_bytes


def test_a_model_built_on_the_gpu_needs_no_host_memory_to_construct(tmp_path):
    plan = plan_for(tmp_path, *SEVEN_B, "distributed.zero_stage=2", "train.precision=bf16", "distributed.procs_per_node=auto", gpus=(H100,) * 8)
    assert plan.host_memory.construction_bytes == 0 and plan.host_memory.fits
    assert "model built on the device" in render_plan(plan)


def test_zero3_init_belongs_to_zero3(tmp_path):
    with pytest.raises(RecipeError, match="zero3_init applies to zero_stage 3 only"):
        plan_for(tmp_path, "distributed.zero3_init=false")


@pytest.mark.parametrize("key", ["offload_optimizer", "offload_params"])
def test_offload_is_refused_on_cpu_and_planned_for_gpus(tmp_path, key):
    overrides = ["distributed.zero_stage=3", f"distributed.{key}=true"]
    with pytest.raises(RecipeError) as info:
        plan_for(tmp_path, *overrides)
    (line,) = info.value.lines()
    assert f"distributed.{key}:" in line and "same memory" in line
    plan = plan_for(tmp_path, *overrides, "distributed.procs_per_node=auto", "train.precision=bf16", gpus=(H100,) * 2)
    assert plan.memory.host_offload_bytes > 0
    assert plan.host_memory.offload_bytes == plan.memory.host_offload_bytes


@pytest.fixture(scope="module")
def qwen2_base(tiny_base, tmp_path_factory):
    """A base of an architecture the analytic counters do not know (biases on q, k, v; untied)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("qwen2-base")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_base / name, out / name)
    config = AutoConfig.for_model("qwen2", vocab_size=400, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
    return out


def test_an_unknown_architecture_is_counted_exactly_on_the_meta_device(tmp_path, qwen2_base):
    from transformers import AutoModelForCausalLM

    from tests.unit.test_finetune_data import FINETUNE

    base = [f"model.path={qwen2_base}", f"data.tokenizer.path={qwen2_base}"]
    plan = make_plan(load_recipe(FINETUNE, [*base, "model.lora=null"]), make_env(tmp_path))
    real = AutoModelForCausalLM.from_pretrained(str(qwen2_base))
    assert plan.arch == "qwen2"
    assert plan.num_params == sum(p.numel() for p in real.parameters())
    assert (plan.sizes.hidden_size, plan.sizes.num_layers, plan.sizes.num_kv_heads) == (64, 3, 2)
    lora = make_plan(load_recipe(FINETUNE, [*base, "model.lora.target_modules=[q_proj, v_proj]", "model.lora.rank=4"]), make_env(tmp_path))
    kv = 2 * 16
    assert lora.num_params - plan.num_params == 3 * 4 * ((64 + 64) + (64 + kv))
    with pytest.raises(RecipeError, match="not in this qwen2 model"):
        make_plan(load_recipe(FINETUNE, [*base, "model.lora.target_modules=[c_attn]"]), make_env(tmp_path))


def test_zero3_buffers_are_sized_to_the_model(tmp_path):
    big = plan_for(tmp_path, *SEVEN_B, "distributed.zero_stage=3").backend_files["ds_config.json"]["zero_optimization"]
    two_layers = 2 * plan_for(tmp_path, *SEVEN_B).num_params // 32
    assert big["reduce_bucket_size"] == 4096**2 and big["stage3_param_persistence_threshold"] == 40960
    assert big["stage3_max_live_parameters"] == big["stage3_max_reuse_distance"] == two_layers  # not DeepSpeed's 1e9
    tiny = plan_for(tmp_path, "distributed.zero_stage=3").backend_files["ds_config.json"]["zero_optimization"]
    assert tiny["reduce_bucket_size"] == tiny["stage3_max_live_parameters"] == 10**7  # the floor: one bucket for a small model
    assert "reduce_bucket_size" not in plan_for(tmp_path).backend_files["ds_config.json"]["zero_optimization"]
