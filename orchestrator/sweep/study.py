"""A sweep's Optuna study: its storage in the sweep directory, which trial each slot runs, and the
pruning decision at each evaluation.

Storage is Optuna's journal file with its open(2)-based lock (`JournalFileOpenLock`): an append-only
log that array tasks on several nodes share through the cluster's filesystem, which SQLite over NFS
is not safe for. A slot is a trial's place in the sweep (the array index on Slurm, the loop index
locally); the slot is stored on its trial, so a requeued task or a re-run sweep finds the trial it
started, resumes it, and never asks for a second one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import SweepError
from orchestrator.shared.filetree import shown
from orchestrator.sweep.space import distributions
from orchestrator.sweep.spec import MAX_TRIALS, SweepSpec

SLOT = "slot"
PRUNED = "pruned"
"""A pruned trial's note: the evaluation that stopped it, in words (`Judge.why`)."""
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class SweepDir:
    """A sweep's directory: the study's journal, one run directory per slot, and what `orch sweep` writes."""

    path: Path

    @property
    def journal(self) -> Path:
        return self.path / "study.journal"

    @property
    def recipe(self) -> Path:
        """The sweep's recipe as submitted, with the command line's overrides applied."""
        return self.path / "recipe.yaml"

    @property
    def best(self) -> Path:
        return self.path / "best.yaml"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def trial(self, slot: int) -> Path:
        return self.path / "trials" / f"{slot:03d}"

    def read_recipe(self):
        """The sweep's recipe (validated again: the file may have been edited by hand; a damaged one
        is one line), which must still have its sweep section."""
        from orchestrator.rundir.layout import RunDir
        from orchestrator.rundir.records import read_recipe

        recipe = read_recipe(RunDir(self.path))
        if recipe.sweep is None:
            raise SweepError(f"{self.recipe} has no `sweep` section: {self.path} is not a sweep directory, or its recipe was edited")
        return recipe


def open_study(sweep: SweepDir, spec: SweepSpec, name: str):
    """The study in `sweep`, to run trials in: created on first use with the spec's pruner and
    direction. Its sampler is Optuna's default and draws nothing: `claim` asks with the slot's own
    (`slot_sampler`)."""
    sweep.path.mkdir(parents=True, exist_ok=True)
    return _study(sweep, name, writable=True, pruner=_pruner(spec), direction=spec.direction)


def read_study(sweep: SweepDir, name: str):
    """The study in `sweep`, to look at: nothing is written to its journal, whatever is asked of it."""
    if not sweep.journal.is_file():
        raise SweepError(f"{sweep.path} is not a sweep directory (no {sweep.journal.name}): give the directory `orch sweep` printed")
    return _study(sweep, name, writable=False)


REPLAY_ERRORS = (KeyError, TypeError, ValueError, AssertionError, AttributeError, IndexError, OverflowError)
"""What Optuna's replay of a record with missing or mistyped fields raises."""


def _study(sweep: SweepDir, name: str, writable: bool, **create):
    """The study named `name`, loaded (created, when writable and absent, with `create`), its whole
    journal replayed once and every trial's slot checked: a damaged journal is one line here."""
    import optuna
    from optuna.storages import JournalStorage

    from orchestrator.sweep.journal import Journal, damaged

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = JournalStorage(Journal(sweep.journal, writable))
        names = {study.study_name for study in storage.get_all_studies()}
        if name in names:
            study = optuna.load_study(study_name=name, storage=storage, pruner=create.get("pruner"))
        elif writable:
            study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, **create)
        elif not names:  # the first trial's process has made the file but not yet the study: no trials
            study = optuna.create_study(study_name=name)
        else:
            raise SweepError(f"{sweep.journal} holds no study named {name!r} (the name in {sweep.recipe.name}): "
                             "it is another sweep's journal, or its recipe was edited")
        slot_trials(study)
    except REPLAY_ERRORS as exc:
        raise damaged(sweep.journal, f"a record Optuna cannot replay: {type(exc).__name__} {shown(str(exc)[:200])}") from None
    return study


def slot_sampler(spec: SweepSpec, slot: int):
    """The sampler that draws slot `slot`'s trial, seeded from the sweep's seed and the slot.

    Array tasks are separate processes that each open the study afresh: with one seed for all, every
    task's sampler drew the same first point. Seeded by slot, a random trial's point (and a TPE
    start-up trial's) is fixed by the sweep's seed and the slot, whichever process asks and in
    whatever order, so a local and a Slurm sweep draw the same; TPE's later draws also depend on the
    trials finished by then. A grid trial's point is its slot's (`grid_point`)."""
    import warnings

    import numpy as np
    from optuna import samplers
    from optuna.exceptions import ExperimentalWarning

    seed = int(np.random.SeedSequence([spec.seed, slot]).generate_state(1)[0])
    if spec.sampler == "tpe":
        return samplers.TPESampler(seed=seed)
    if spec.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return samplers.PartialFixedSampler(grid_point(spec, slot), samplers.RandomSampler(seed=seed))


def _pruner(spec: SweepSpec):
    from optuna import pruners

    rule = spec.pruner
    if rule.kind == "median":
        return pruners.MedianPruner(n_startup_trials=rule.startup_trials, n_warmup_steps=rule.warmup_steps)
    if rule.kind == "successive_halving":
        return pruners.SuccessiveHalvingPruner(reduction_factor=rule.reduction_factor)
    return pruners.NopPruner()


def slot_trials(study) -> dict[int, object]:
    """Each slot's trial (FrozenTrial), the newest where a slot was ever asked twice. What a
    hand-edited journal could put there and every reader would trip over is refused, one line: a slot
    that is not a whole number a sweep can have (it names a run directory), a result or a reported
    value that is not one number."""
    slots = {}
    for trial in study.get_trials(deepcopy=False):
        slot = trial.user_attrs.get(SLOT)
        if slot is None:
            continue
        if type(slot) is not int or not 0 <= slot < MAX_TRIALS:
            raise _damaged_trial(trial, f"slot is {json.dumps(slot)[:40]}, not a whole number from 0 to {MAX_TRIALS - 1}")
        if trial.values is not None and (len(trial.values) != 1 or not _number(trial.values[0])):
            raise _damaged_trial(trial, f"result is {json.dumps(trial.values)[:40]}, not one number")
        if not all(type(step) is int and _number(value) for step, value in trial.intermediate_values.items()):
            raise _damaged_trial(trial, "reported values are not numbers at whole-number steps")
        slots[slot] = trial
    return slots


def _number(value: object) -> bool:
    return type(value) in (int, float)


def _damaged_trial(trial, what: str) -> SweepError:
    return SweepError(f"the sweep's journal is damaged: trial {trial.number}'s {what}")


def claim(study, spec: SweepSpec, slot: int):
    """The trial slot `slot` runs: the one it started before (still running: resume it), a new one
    drawn by the sampler, or None when the slot's trial has finished (complete, pruned or failed)."""
    import optuna

    started = slot_trials(study).get(slot)
    if started is not None:
        if started.state.name in FINISHED:
            return None
        return optuna.trial.Trial(study, started._trial_id)
    study.sampler = slot_sampler(spec, slot)  # every slot asks with its own, in one process or many
    trial = study.ask(distributions(spec))
    trial.set_user_attr(SLOT, slot)
    return trial


def grid_point(spec: SweepSpec, slot: int) -> dict[str, object]:
    """The slot-th point of the grid, the first parameter varying slowest: a grid sweep is the same
    trials in the same places however its tasks start. (Optuna's GridSampler draws points in random
    order and ends the study from inside `tell`, which only works within `study.optimize`.)"""
    point = {}
    for key, parameter in reversed(spec.parameters.items()):
        slot, index = divmod(slot, len(parameter.choices))
        point[key] = parameter.choices[index]
    return dict(reversed(point.items()))


@dataclass
class Judge:
    """Reports a trial's metric at each evaluation and says when to stop it: the pruner's verdict,
    or at once for a value that is not finite or past `diverged_above` (the run has diverged)."""

    trial: object
    metric: str
    diverged_above: float | None = None
    maximize: bool = False
    reported: set[int] = field(default_factory=set)
    pruned_at: int | None = None
    """The evaluation's step that stopped the trial (the ranks train on while it is told: they stop a step or more later)."""
    why: str = ""
    """That evaluation's value and what was wrong with it, in words."""

    def __post_init__(self) -> None:
        started = next(t for t in self.trial.study.get_trials(deepcopy=False) if t.number == self.trial.number)
        self.reported |= set(started.intermediate_values)

    def observe(self, rows: list[dict]) -> bool:
        """True once the trial should stop; rows are metric rows (any, in order)."""
        for row in rows:
            value, step = row.get(self.metric), row.get("step")
            if value is None or step is None or step in self.reported or self.pruned_at is not None:
                continue
            value = float(value)
            self.trial.report(value if math.isfinite(value) else float("nan"), step)
            self.reported.add(step)
            why = self._verdict(value)
            if why:
                self.pruned_at, self.why = step, f"{self.metric} {value:.4g} at step {step} {why}"
        return self.pruned_at is not None

    def _verdict(self, value: float) -> str:
        """Why a trial with this value just reported stops, or "" when it goes on."""
        if not math.isfinite(value):
            return "was not finite"
        if self.diverged_above is not None and (value < self.diverged_above if self.maximize else value > self.diverged_above):
            return f"was past diverged_above {self.diverged_above:g}"
        return "was behind the other trials by the pruner's rule" if self.trial.should_prune() else ""

    @classmethod
    def of(cls, trial, spec: SweepSpec) -> "Judge":
        return cls(trial, spec.metric, spec.pruner.diverged_above, spec.direction == "maximize")


def final_value(rows: list[dict], metric: str) -> float | None:
    """A trial's result: the last value of the metric it logged."""
    values = [row[metric] for row in rows if row.get(metric) is not None]
    return float(values[-1]) if values else None
