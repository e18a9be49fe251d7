"""A sweep's search space: its parameters checked against the recipe, as Optuna distributions, and a
trial's values turned back into the dotted overrides every other command takes.

Pure but for Optuna's distribution classes, so `orch validate` refuses a bad space before anything runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel

from orchestrator.errors import Location, Problem, RecipeError, SweepError
from orchestrator.recipe.loader import LoadedRecipe, annotation_members, load_recipe
from orchestrator.recipe.schema import Recipe
from orchestrator.sweep.spec import ParameterSpec, SweepSpec

NO_SWEEP = "sweep=null"
"""A trial trains the recipe without its sweep section: its run directory holds one run's recipe."""


def sweep_of(loaded: LoadedRecipe, recipe: Path) -> SweepSpec:
    if loaded.recipe.sweep is None:
        raise RecipeError([Problem("sweep", "this recipe has no `sweep` section: add one to say what to search", Location(str(recipe)))])
    return loaded.recipe.sweep


def check_space(loaded: LoadedRecipe, recipe: Path, overrides: list[str]) -> None:
    """Every parameter is a recipe key that takes its values: the recipe is loaded once with each
    parameter at each end of its range (or at each choice), so a mistyped key gets the loader's
    did-you-mean and an impossible value its rule, and a range must be over a number."""
    spec = sweep_of(loaded, recipe)
    problems = [loaded.problem(f"sweep.parameters.{key}", f"a range needs a numeric key; {key} is not a number: list `choices`")
                for key, parameter in spec.parameters.items() if parameter.range is not None and not _numeric(key)]
    if problems:
        raise RecipeError(problems)
    for values in _corners(spec):
        try:
            load_recipe(recipe, [*overrides, NO_SWEEP, *trial_overrides(values)])
        except RecipeError as exc:
            raise RecipeError([_at_parameter(loaded, problem, values) for problem in exc.problems]) from None


def _at_parameter(loaded: LoadedRecipe, problem: Problem, values: dict[str, object]) -> Problem:
    """A problem a trial's value caused, told at the sweep parameter that gives it."""
    key = next((k for k in values if problem.path == k or problem.path.startswith(k + ".") or k.startswith(problem.path + ".")), None)
    if key is None:
        return problem
    return Problem(problem.path, f"{problem.message} (sweep parameter {key} = {json.dumps(values[key])})",
                   loaded.locate(f"sweep.parameters.{key}"))


def trial_overrides(values: dict[str, object]) -> list[str]:
    """A trial's parameter values as `key=value` overrides (JSON is YAML, so every value reads back as written)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def checked_values(spec: SweepSpec, values: dict[str, object]) -> dict[str, object]:
    """A trial's values as read back from the journal, accepted only as a point of the sweep's space:
    exactly its parameters, each one of its choices or inside its range, of the range's kind. The
    journal is a file anyone who can write the sweep directory can edit, and a trial's values become
    overrides: unchecked, a crafted journal set `checkpoint.dir` outside the sweep."""
    keys = set(values)
    if keys != set(spec.parameters):
        extra, missing = sorted(keys - set(spec.parameters)), sorted(set(spec.parameters) - keys)
        what = f"parameter {extra[0]}, which the sweep does not search" if extra else f"no value for parameter {missing[0]}"
        raise SweepError(f"the sweep's journal gives a trial {what}: refused (the journal was edited, or is another sweep's)")
    for key, parameter in spec.parameters.items():
        if not _in_space(parameter, values[key]):
            raise SweepError(f"the sweep's journal gives a trial {key} = {json.dumps(values[key])[:60]}, outside the sweep's "
                             "space: refused (the journal was edited, or is another sweep's)")
    return values


def _in_space(parameter: ParameterSpec, value: object) -> bool:
    if parameter.kind == "choices":
        return any(type(value) is type(choice) and value == choice for choice in parameter.choices)
    low, high = parameter.range
    if parameter.kind == "int":
        return type(value) is int and low <= value <= high
    return type(value) in (int, float) and math.isfinite(value) and low <= value <= high


def distributions(spec: SweepSpec) -> dict:
    """The parameters as Optuna distributions, which its samplers draw from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def one(parameter: ParameterSpec):
        if parameter.kind == "choices":
            return CategoricalDistribution(parameter.choices)
        low, high = parameter.range
        if parameter.kind == "int":
            return IntDistribution(int(low), int(high))
        return FloatDistribution(low, high, log=parameter.kind == "log_uniform")

    return {key: one(parameter) for key, parameter in spec.parameters.items()}


def _corners(spec: SweepSpec) -> list[dict[str, object]]:
    """Parameter values to load the recipe with: every choice and both ends of every range, one
    parameter varied at a time (the others at their first value)."""
    def values(parameter: ParameterSpec) -> list[object]:
        return list(parameter.choices) if parameter.kind == "choices" else list(parameter.range)

    first = {key: values(p)[0] for key, p in spec.parameters.items()}
    corners = [first]
    for key, parameter in spec.parameters.items():
        corners += [{**first, key: value} for value in values(parameter)[1:]]
    return corners


def _numeric(key: str) -> bool:
    """Whether the recipe key holds a number (int or float, possibly optional); an unknown key is the
    loader's to report."""
    annotations = _annotations(Recipe, key.split("."))
    if annotations is None:
        return True
    return any(t in (int, float) for t in annotations)


def _annotations(model: type[BaseModel], parts: list[str]) -> list | None:
    candidates = [model]
    for index, part in enumerate(parts):
        infos = [m.model_fields[part] for m in candidates if part in m.model_fields]
        if not infos:
            return None
        members = [t for info in infos for t in annotation_members(info.annotation)]
        if index == len(parts) - 1:
            return members
        candidates = [t for t in members if isinstance(t, type) and issubclass(t, BaseModel)]
    return None
