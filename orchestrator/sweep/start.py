"""`orch sweep RECIPE`: check the search space, set up the sweep directory, then run the trials here
(`--local`) or submit them as one Slurm array job (`--slurm`).

The sweep directory is laid out as a run directory of the sweep's recipe (its `recipe.yaml`,
`plan.json`, data record, scripts, Slurm jobs and logs), plus the study's journal, `trials/NNN`
(each trial's own run directory), `best.yaml` and `report.html`. Running the same command again
continues the sweep: finished trials are kept, unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from orchestrator.errors import SweepError
from orchestrator.shared.filetree import shown
from orchestrator.plan.planner import LaunchPlan
from orchestrator.recipe.loader import LoadedRecipe, load_recipe
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.layout import RunDir
from orchestrator.sweep.space import check_space
from orchestrator.sweep.study import FINISHED, SweepDir, read_study, slot_trials
from orchestrator.sweep.trial import sweep_overrides


EXTENDABLE = {"sweep": {"trials", "parallel"}, "slurm": {"time_limit"}}
"""What a re-run may change and still continue the same sweep: how many trials, how many at once,
and how long each may run. Anything else changes what the trials train or how they are searched."""


def plan_sweep(recipe: Path, overrides: list[str], sweep_dir: Path | None, for_slurm: bool):
    """The sweep's recipe planned into its directory (default `sweeps/<name>`), after its space is
    checked; a directory that holds another sweep is refused rather than mixed into."""
    from orchestrator.plan.load import load_and_plan
    from orchestrator.rundir.records import read_recipe

    name = load_recipe(recipe, overrides).recipe.name
    check_sweep_dir(sweep_dir or Path("sweeps") / name)
    loaded, plan, env = load_and_plan(recipe, overrides, run_dir=sweep_dir or Path("sweeps") / name, for_slurm=for_slurm,
                                      measure_cpu=False)
    check_space(loaded, recipe, [*overrides, *sweep_overrides(SweepDir(plan.run_dir), loaded.recipe)])
    run = RunDir(plan.run_dir)
    if run.plan.exists():
        changes = sweep_changes(read_recipe(run), plan.recipe)
        if changes:
            raise SweepError(f"{plan.run_dir} holds a sweep of another recipe or search space ({'; '.join(changes)}): only "
                             "sweep.trials, sweep.parallel and slurm.time_limit may change to continue it; give another "
                             "--sweep-dir (or remove that directory) to start this one")
    return loaded, plan, env


def check_sweep_dir(path: Path) -> None:
    """The sweep directory's name goes into every trial's recipe (its dashboards' group and store) and
    into best.yaml's first line: a line break, another unprintable character or bytes that are not
    UTF-8 cannot be written there as themselves, so such a name is refused before anything starts."""
    if not str(path).isprintable():
        raise SweepError(f"sweep directory {shown(str(path))}: its name holds a line break, another unprintable character or "
                         "bytes that are not UTF-8, which its trials' recipes cannot hold: give another --sweep-dir")


def sweep_changes(before: Recipe, now: Recipe) -> list[str]:
    """What differs between a sweep directory's recipe and this one beyond `EXTENDABLE`, each as `key: old -> new`."""
    from orchestrator.shared.checkpoint.compat import recipe_changes

    unsafe, safe = recipe_changes(before.model_dump(mode="json", exclude=EXTENDABLE), now.model_dump(mode="json", exclude=EXTENDABLE))
    renamed = [f"name: {before.name!r} -> {now.name!r}"] if before.name != now.name else []  # the study's name
    return renamed + sorted(unsafe + safe)


def sweep_locally(recipe: Path, overrides: list[str], sweep_dir: Path | None, say: Callable[[str], None]) -> SweepDir:
    """Every trial on this machine, one after another, while holding the sweep directory."""
    from orchestrator.starting.attempt import hold_attempt
    from orchestrator.starting.execute import prepare_run
    from orchestrator.sweep.trial import run_locally

    loaded, plan, _ = plan_sweep(recipe, overrides, sweep_dir, for_slurm=False)
    with hold_attempt(plan.run_dir):
        prepare_run(plan, list(loaded.sources))
        sweep = SweepDir(plan.run_dir)
        run_locally(sweep, say)
    return sweep


def submit_sweep(recipe: Path, overrides: list[str], sweep_dir: Path | None, then: tuple[str, ...]) -> tuple[SweepDir, list[str], list[str]]:
    """One array job for the slots whose trial has not finished, `sweep.parallel` at a time, after a
    data preparation job if needed and before the `then` jobs (gate, release) on the best trial.
    Returns the sweep, the job ids and their kinds (none when every trial has finished)."""
    from orchestrator.slurm.script import render_array_sbatch, render_step_sbatch
    from orchestrator.slurm.submit import signal_grace_s, submit_chain

    loaded, plan, env = plan_sweep(recipe, overrides, sweep_dir, for_slurm=True)
    spec = loaded.recipe.sweep
    check_capacity(plan, spec.parallel)
    sweep = SweepDir(plan.run_dir)
    slots = unfinished_slots(sweep, loaded)
    if not slots:
        return sweep, [], []
    slurm_spec = plan.recipe.slurm
    array = render_array_sbatch(plan, slurm_spec, env.python, signal_grace_s(plan.run_dir, slurm_spec), slots, min(spec.parallel, len(slots)))
    after = [(step, render_step_sbatch(plan, slurm_spec, env.python, step, ["sweep", step, str(plan.run_dir)])) for step in then]
    jobs = submit_chain(plan, env.python, list(loaded.sources), ("sweep", array), after)
    kinds = ["prepare"] * (len(jobs) - 1 - len(then)) + ["sweep", *then]
    return sweep, jobs, kinds


def unfinished_slots(sweep: SweepDir, loaded: LoadedRecipe) -> list[int]:
    if not sweep.journal.exists():
        return list(range(loaded.recipe.sweep.trials))
    finished = {slot for slot, trial in slot_trials(read_study(sweep, loaded.recipe.name)).items() if trial.state.name in FINISHED}
    return [slot for slot in range(loaded.recipe.sweep.trials) if slot not in finished]


def check_capacity(plan: LaunchPlan, parallel: int) -> None:
    """`parallel` trials of `distributed.nodes` nodes each must fit the partition at once, or the
    array's limit is a promise the cluster cannot keep."""
    from orchestrator.slurm.client import slurm

    partition = plan.recipe.slurm.partition
    out = slurm("sinfo", "-h", "-o", "%D", *(["-p", partition] if partition else []))
    nodes = sum(int(line) for line in out.split() if line.strip().isdigit())
    needed = parallel * plan.topology.nodes
    if needed > nodes:
        raise SweepError(f"sweep.parallel {parallel} trials of {plan.topology.nodes} node(s) need {needed} nodes at once, but "
                         f"partition {partition or '(default)'} has {nodes}: lower sweep.parallel")
