"""Recipe loading: inheritance, overrides, and errors that name the file, the line and the fix."""

from pathlib import Path

import pytest

from orchestrator.errors import RecipeError
from orchestrator.recipe.loader import load_recipe
from tests.helpers.project import RECIPES, TINY


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.lines()


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(recipe, tiny_base):
    """Fine-tuning recipes point at a base model made by an earlier run: a small saved model stands in."""
    import yaml

    base = ["model.path=" + str(tiny_base), "data.tokenizer.path=" + str(tiny_base)]
    assert load_recipe(recipe, base if yaml.safe_load(recipe.read_text()).get("task") == "finetune" else []).recipe.name


def test_overrides_are_typed_and_recorded_as_command_line():
    loaded = load_recipe(TINY, ["train.steps=70", "distributed.zero_stage=3", "train.optimizer.betas=[0.8, 0.9]"])
    assert loaded.recipe.train.steps == 70
    assert loaded.recipe.distributed.zero_stage == 3
    assert loaded.recipe.train.optimizer.betas == (0.8, 0.9)
    assert "command line" in str(loaded.locate("train.steps"))
    assert str(loaded.locate("model.hidden_size")).endswith("tiny-pretrain.yaml:9")


def test_typo_names_file_line_and_nearest_key(tmp_path):
    path = write(tmp_path, "r.yaml", f"base: {TINY}\nname: t\ntrain:\n  setps: 3\n")
    (line,) = problems(path)
    assert line == f"{path}:4: train.setps: unknown key; did you mean `steps`?"


def test_all_problems_are_reported_together(tmp_path):
    path = write(tmp_path, "r.yaml", f"base: {TINY}\nname: t\nmodel:\n  arch: lama\ndistributed:\n  zero_stage: 5\ntrain:\n  precision: fp8\n")
    lines = problems(path)
    assert len(lines) == 3
    assert any(f"{path}:4: model.arch: 'lama' is not one of" in l and "did you mean `llama`" in l for l in lines)
    assert any(f"{path}:6: distributed.zero_stage" in l and "less than or equal to 3" in l for l in lines)
    assert any(f"{path}:8: train.precision" in l for l in lines)


def test_base_inheritance_merges_sections_and_keeps_child_lines(tmp_path):
    path = write(tmp_path, "child.yaml", f"base: {TINY}\nname: child\ntrain:\n  steps: 20\n")
    loaded = load_recipe(path)
    assert loaded.recipe.name == "child"
    assert loaded.recipe.train.steps == 20
    assert loaded.recipe.train.micro_batch_size == 8  # inherited
    assert str(loaded.locate("train.steps")) == f"{path}:4"
    assert loaded.sources == (TINY, path)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "base: a.yaml\nname: b\n")
    (line,) = problems(tmp_path / "a.yaml")
    assert "cycle" in line


def test_unknown_override_key_points_at_command_line():
    (line,) = problems(TINY, ["train.stpes=3"])
    assert line.startswith("command line `train.stpes=3`: train.stpes: unknown key; did you mean `steps`?")


def test_override_without_equals_sign():
    (line,) = problems(TINY, ["train.steps"])
    assert "section.key=value" in line


def test_seq_len_longer_than_positions_is_caught():
    (line,) = problems(TINY, ["data.seq_len=1024"])
    assert "data.seq_len" in line and "max_position_embeddings (256)" in line


def test_missing_data_path_is_caught(tmp_path):
    (line,) = problems(TINY, ["data.builtin=null", f"data.path={tmp_path / 'nope.jsonl'}"])
    assert "data.path: path does not exist" in line


def test_invalid_yaml_gives_the_line(tmp_path):
    path = write(tmp_path, "r.yaml", "name: x\ntrain:\n  steps: [1,\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}:") and "not valid YAML" in line


def test_missing_recipe_file(tmp_path):
    (line,) = problems(tmp_path / "missing.yaml")
    assert "recipe file not found" in line


def test_cross_field_rule_points_at_the_key(tmp_path):
    path = write(tmp_path, "r.yaml", f"base: {TINY}\nname: t\ndistributed:\n  zero_stage: 0\n  offload_optimizer: true\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}:5: distributed.offload_optimizer:")


def test_placeholder_sections_are_closed():
    (line,) = problems(TINY, ["energy.meter=nvml"])
    assert "energy.meter: unknown key" in line


def test_nested_typo_in_slurm_section():
    (line,) = problems(TINY, ["slurm.partiton=gpu"])
    assert "slurm.partiton: unknown key; did you mean `partition`?" in line


def test_aliases_are_bounded_and_written_values_are_not(tmp_path):
    """Aliases may add at most ALIAS_BUDGET values (in an override too); values written out cost their text."""
    bomb = "[" + ", ".join(["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + ["*a"] * 1_200) + "]"
    (line,) = problems(TINY, [f"description={bomb}"])
    assert line.startswith("command line `description=[&a") and "description: YAML aliases expand this value to 13,212 values" in line
    choices = ", ".join(str(i) for i in range(1, 12_001))
    path = write(tmp_path, "r.yaml", f"base: {TINY}\nname: t\nsweep:\n  parameters:\n    train.steps: {{choices: [{choices}]}}\n")
    assert len(load_recipe(path).recipe.sweep.parameters["train.steps"].choices) == 12_000


def test_duplicate_keys_are_refused_in_every_mapping_but_merge_keys_are_not_duplicates(tmp_path):
    path = write(tmp_path, "r.yaml", f"base: {TINY}\nname: t\nname: u\ntrain: {{steps: 3, steps: 4}}\n")
    assert problems(path) == [f"{path}:3: name: written twice (lines 2 and 3): keep one",
                              f"{path}:4: train.steps: written twice (lines 4 and 4): keep one"]
    merged = write(tmp_path, "m.yaml", f"base: {TINY}\nname: t\nsweep:\n  parameters:\n"
                                       "    train.schedule.warmup_steps: &ws {choices: [1, 2]}\n"
                                       "    train.eval_interval:\n      <<: *ws\n      choices: [5, 10]\n")
    assert load_recipe(merged).recipe.sweep.parameters["train.eval_interval"].choices == [5, 10]


def test_a_sweep_parameter_problem_names_the_parameter(tmp_path):
    path = write(tmp_path, "r.yaml", f"base: {TINY}\nname: t\nsweep:\n  parameters:\n"
                                     "    train.optimizer.lr: {log_uniform: [0, 1]}\n    train.steps: {chioces: [1]}\n")
    lines = problems(path)
    assert f"{path}:5: sweep.parameters.train.optimizer.lr.log_uniform: log_uniform needs a positive low end (got 0.0)" in lines
    assert f"{path}:6: sweep.parameters.train.steps.chioces: unknown key; did you mean `choices`?" in lines
