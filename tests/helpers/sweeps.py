"""A sweep directory as `orch sweep` leaves it, without training: the sweep's recipe, a real Optuna
journal with trial 0 complete and trial 1 still running, and trial 0's run directory."""

from __future__ import annotations

import json
from pathlib import Path

from optuna.distributions import CategoricalDistribution, distribution_to_json

from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.records import recipe_yaml
from orchestrator.sweep.study import SweepDir, claim, open_study
from tests.helpers.planning import write_plan
from tests.helpers.project import RECIPES

SWEEP = RECIPES / "tiny-sweep.yaml"


def make_sweep(directory: Path) -> SweepDir:
    recipe = load_recipe(SWEEP).recipe
    sweep = SweepDir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sweep.recipe.write_text(recipe_yaml(recipe))
    study = open_study(sweep, recipe.sweep, recipe.name)
    done = claim(study, recipe.sweep, 0)
    study.tell(done, 2.5)
    claim(study, recipe.sweep, 1)
    trial = sweep.trial(0)
    write_plan(trial)
    (trial / "recipe.yaml").write_text(recipe_yaml(load_recipe(SWEEP, ["sweep=null", *_overrides(done.params)]).recipe))
    (trial / "metrics.jsonl").write_text(json.dumps({"step": 150, "loss": 2.4, "val_loss": 2.5}) + "\n")
    return sweep


def _overrides(params: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def journal_record(op_code: int, **fields) -> str:
    """One line of the journal as Optuna writes it, from a worker that is not the reader's."""
    return json.dumps({"op_code": op_code, "worker_id": "elsewhere-1", **fields}, separators=(",", ":")) + "\n"


def add_crafted_trial(sweep: SweepDir, slot: int, values: dict) -> None:
    """A running trial at `slot` with `values`, as a hand edit of the journal would add it: each
    value recorded as the one choice of its parameter."""
    choices = {key: distribution_to_json(CategoricalDistribution([value])) for key, value in values.items()}
    record = journal_record(CREATE_TRIAL, study_id=0, datetime_start="2026-01-01T00:00:00", params={key: 0 for key in values},
                            distributions=choices, user_attrs={"slot": slot})
    with sweep.journal.open("a") as journal:
        journal.write(record)


CREATE_TRIAL = 4
SET_TRIAL_USER_ATTR = 8
