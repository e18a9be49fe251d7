from orchestrator.recipe.loader import load_recipe
from orchestrator.shared.schedule import lr_multiplier
from tests.helpers.project import TINY


def train(*overrides):
    return load_recipe(TINY, ["train.steps=101", *overrides]).recipe.train


def test_linear_warmup_then_cosine_to_floor():
    t = train("train.schedule.warmup_steps=10", "train.schedule.min_lr_ratio=0.1")
    assert lr_multiplier(t, 0) == 0.1 and lr_multiplier(t, 9) == 1.0
    assert lr_multiplier(t, 10) == 1.0
    assert abs(lr_multiplier(t, 100) - 0.1) < 1e-12
    values = [lr_multiplier(t, s) for s in range(10, 101)]
    assert values == sorted(values, reverse=True)


def test_linear_and_constant_decay():
    linear = train("train.schedule.warmup_steps=0", "train.schedule.decay=linear", "train.schedule.min_lr_ratio=0")
    assert lr_multiplier(linear, 0) == 1.0 and lr_multiplier(linear, 50) == 0.5 and lr_multiplier(linear, 100) == 0.0
    constant = train("train.schedule.warmup_steps=4", "train.schedule.decay=constant")
    assert [lr_multiplier(constant, s) for s in (0, 3, 50, 100)] == [0.25, 1.0, 1.0, 1.0]
