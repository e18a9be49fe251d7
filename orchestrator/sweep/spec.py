"""The `sweep` section: a search over recipe keys, run by `orch sweep` as one trial per run directory.

A recipe with this section is still a recipe (`orch run` trains its base point); `orch sweep`
turns each trial's parameters into dotted overrides of it. Search and pruning are Optuna's; this
section only names them, so a sweep file reads the same whatever sampler it uses.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field, model_validator

from orchestrator.spec import RuleViolation, Seed, Spec

RANGES = ("uniform", "log_uniform", "int")
MAX_TRIALS = 10_000


class ParameterSpec(Spec):
    """Exactly one of: `choices` (a list of values), or a range `[low, high]` as `uniform`,
    `log_uniform` (drawn on a log scale, for learning rates) or `int` (whole numbers)."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)
    choices: Optional[list[object]] = Field(None, min_length=1)
    uniform: Optional[tuple[float, float]] = None
    log_uniform: Optional[tuple[float, float]] = None
    int_: Optional[tuple[int, int]] = Field(None, alias="int")

    @model_validator(mode="after")
    def _one_kind(self) -> "ParameterSpec":
        given = [name for name in ("choices", *RANGES) if self._value(name) is not None]
        if len(given) != 1:
            raise RuleViolation("", f"give exactly one of choices, {', '.join(RANGES)} (found {', '.join(given) or 'none'})")
        if self.range is not None:
            low, high = self.range
            if not low < high:
                raise RuleViolation(self.kind, f"a range [low, high] needs low < high (got [{low}, {high}])")
            if self.kind == "log_uniform" and low <= 0:
                raise RuleViolation(self.kind, f"log_uniform needs a positive low end (got {low})")
        return self

    def _value(self, kind: str):
        return self.int_ if kind == "int" else getattr(self, kind)

    @property
    def kind(self) -> str:
        return next(name for name in ("choices", *RANGES) if self._value(name) is not None)

    @property
    def range(self) -> tuple[float, float] | None:
        return None if self.kind == "choices" else self._value(self.kind)


class PrunerSpec(Spec):
    """When to stop a trial early, judged on the sweep's metric at each evaluation (`train.eval_interval`).

    `median`: a trial whose best value so far is worse than the median of finished trials at the
    same step. `successive_halving`: only the best 1/`reduction_factor` of trials at each rung
    go on. `none`: every trial runs to its last step. Whatever the rule, a trial whose metric is
    not finite, or past `diverged_above` (below it, when maximising), has diverged and is pruned at once.
    """

    kind: Literal["median", "successive_halving", "none"] = "median"
    startup_trials: int = Field(1, ge=0, description="finished trials before `median` prunes anything")
    warmup_steps: int = Field(0, ge=0, description="training steps of a trial before it can be pruned")
    reduction_factor: int = Field(3, ge=2, description="successive_halving: 1 in this many trials go on at each rung")
    diverged_above: Optional[float] = Field(None, description="a metric past this bound prunes the trial at its first evaluation")


class SweepSpec(Spec):
    metric: str = Field("val_loss", description="a metric of metrics.jsonl rows; its last value is the trial's result")
    direction: Literal["minimize", "maximize"] = "minimize"
    parameters: dict[str, ParameterSpec] = Field(min_length=1, description="dotted recipe keys, as for overrides")
    sampler: Literal["grid", "random", "tpe"] = Field("tpe", description="grid needs choices for every parameter")
    trials: int = Field(8, ge=1, le=MAX_TRIALS, description="for grid: at most the number of grid points")
    parallel: int = Field(1, ge=1, description="trials running at once (a Slurm array's %limit)")
    pruner: PrunerSpec = PrunerSpec()
    seed: Seed = 0

    @model_validator(mode="after")
    def _grid_is_choices(self) -> "SweepSpec":
        if self.sampler == "grid":
            ranged = [key for key, p in self.parameters.items() if p.kind != "choices"]
            if ranged:
                raise RuleViolation("sampler", f"sampler `grid` needs choices for every parameter, not a range ({', '.join(ranged)})")
            points = 1
            for p in self.parameters.values():
                points *= len(p.choices)
            if self.trials > points:
                raise RuleViolation("trials", f"{self.trials} trials but the grid has {points} points: lower sweep.trials")
        if self.parallel > self.trials:
            raise RuleViolation("parallel", f"{self.parallel} trials at once but only {self.trials} trials: lower sweep.parallel")
        return self
