"""One trial of a sweep, run to its end: locally by `orch sweep --local`, on Slurm by each array task
(`python -m orchestrator.sweep.trial --sweep-dir DIR`, its slot the array index).

A trial is an ordinary run in `trials/NNN` of the sweep directory (checkpoints, resume, energy,
tracking), trained from the sweep's recipe with the trial's parameters as overrides. Its metric goes
to the study at each evaluation; a pruned trial stops the way a preempted run does (checkpoint, exit
code), is told to the study as pruned and says so in its run's history (`orch runs`: PRUNED), so its job
ends without a requeue and with exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from orchestrator.errors import BudgetExceeded, LaunchError, OrchestratorError, Preempted
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.rows import Pruned
from orchestrator.sweep.space import NO_SWEEP, checked_values, trial_overrides
from orchestrator.sweep.study import PRUNED, Judge, SweepDir, claim, final_value, open_study
from orchestrator.shared.tracking.sinks import sqlite_uri


def trial_args(trial, sweep: SweepDir, recipe) -> list[str]:
    """The overrides that turn the sweep's recipe into this trial's: its parameters (checked against
    the sweep's space: they come from a file), then the sweep's own (`sweep_overrides`)."""
    return [NO_SWEEP, *trial_overrides(checked_values(recipe.sweep, trial.params)), *sweep_overrides(sweep, recipe)]


def sweep_overrides(sweep: SweepDir, recipe) -> list[str]:
    """What every trial of the sweep shares: dashboards grouped by sweep (wandb's group; one MLflow
    store with a parent run, where the recipe names no store). Written as JSON values and a
    percent-quoted URI, so the directory's name reads back as itself: pasted in, a `#` cut the store's
    path short and `[x]` made the group a list."""
    values = {}
    if recipe.tracking.any:
        values["tracking.group"] = sweep.path.name
    if recipe.tracking.mlflow.enabled and recipe.tracking.mlflow.tracking_uri is None:
        values["tracking.mlflow.tracking_uri"] = sqlite_uri(sweep.path / "mlflow.db")
    return trial_overrides(values)


def tell(study, trial, spec, run: RunDir, judge: Judge, failed: str | None = None) -> str:
    """Records how the trial ended, in the study and (pruned) in the run's history, where `orch runs`
    reads it, and says it in a line: complete, pruned or failed."""
    from optuna.trial import TrialState

    rows = run.metric_rows()
    if judge.pruned_at is not None:
        step = rows[-1]["step"]  # where the ranks stopped, past the evaluation that pruned it (a logged row): as the tables show
        events.append(run.events, Pruned(step=step, reason=judge.why))
        trial.set_user_attr(PRUNED, judge.why)
        study.tell(trial, state=TrialState.PRUNED)
        return f"pruned at step {step} ({judge.why})"
    value = final_value(rows, spec.metric)
    failed = failed or (f"no {spec.metric} was logged" if value is None else None)
    if failed:
        trial.set_user_attr("failure", failed)
        study.tell(trial, state=TrialState.FAIL)
        return f"failed: {failed}"
    study.tell(trial, value)
    return f"complete, {spec.metric} {value:.4f}"


def run_locally(sweep: SweepDir, say: Callable[[str], None]) -> None:
    """Every slot in order, one trial at a time; a finished trial is skipped, an interrupted one resumes."""
    from orchestrator.starting.execute import SubprocessRunner, launch, prepare_run
    from orchestrator.starting.local import LocalRunRequest, plan_local_run

    recipe = sweep.read_recipe()
    spec = recipe.sweep
    study = open_study(sweep, spec, recipe.name)
    for slot in range(spec.trials):
        trial = claim(study, spec, slot)
        if trial is None:
            continue
        say(f"trial {slot}: {', '.join(f'{k}={v}' for k, v in trial.params.items())}")
        request = LocalRunRequest(recipe=sweep.recipe, overrides=trial_args(trial, sweep, recipe), run_dir=sweep.trial(slot))
        loaded, plan, attempt = plan_local_run(request, say)
        judge = Judge.of(trial, spec)
        failed = None
        with attempt:
            run = prepare_run(plan, list(loaded.sources))
            try:
                launch(plan, run, SubprocessRunner(attempt), stop_when=judge.observe)
            except Preempted:
                if judge.pruned_at is None:
                    raise  # Ctrl-C or a signal to `orch sweep`: the trial stays unfinished and resumes next time
            except (LaunchError, BudgetExceeded) as exc:
                failed = str(exc)
        say(f"trial {slot}: {tell(study, trial, spec, run, judge, failed)}")


def main() -> None:
    """An array task: its slot's trial, planned for this cluster on first start, then the job step."""
    from orchestrator.errors import EXIT_REQUEUE
    from orchestrator.starting.execute import prepare_run
    from orchestrator.plan.load import load_and_plan
    from orchestrator.rundir.records import add_job
    from orchestrator.slurm.batch import run_job_step

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep-dir", type=Path, required=True)
    sweep = SweepDir(parser.parse_args().sweep_dir)
    slot = int(os.environ["SLURM_ARRAY_TASK_ID"])
    recipe = sweep.read_recipe()
    spec = recipe.sweep
    study = open_study(sweep, spec, recipe.name)
    trial = claim(study, spec, slot)
    if trial is None:
        print(f"trial {slot} has finished; nothing to run", flush=True)
        return
    run = RunDir(sweep.trial(slot))
    if not run.plan.exists():
        loaded, plan, _ = load_and_plan(sweep.recipe, trial_args(trial, sweep, recipe), run_dir=run.path, for_slurm=True)
        prepare_run(plan, list(loaded.sources))
    add_job(run, os.environ["SLURM_JOB_ID"], "train")
    judge = Judge.of(trial, spec)
    step = run_job_step(run, stop_when=judge.observe)
    if judge.pruned_at is None and (step.requeued or step.code == EXIT_REQUEUE or (step.stopped_by_scheduler and step.code != 0)):
        # Requeued, or stopped by a cancel (after a checkpoint, or killed still starting up, before the
        # ranks could take the signal): the trial is unfinished and resumes at this slot's next start.
        # A cancel that came as the ranks finished (exit 0) found the trial complete.
        how = "after a checkpoint" if step.requeued or step.code == EXIT_REQUEUE else f"by the scheduler (exit {step.code}) before its ranks could checkpoint"
        print(f"trial {slot}: stopped {how}; it resumes when its slot runs again", flush=True)
        sys.exit(step.code)
    failed = None if judge.pruned_at is not None or step.code == 0 else f"the job step exited {step.code}"
    print(f"trial {slot}: {tell(study, trial, spec, run, judge, failed)}", flush=True)
    sys.exit(step.code if failed else 0)  # a pruned trial's task ends COMPLETED: the sweep did what it should


if __name__ == "__main__":
    try:
        main()
    except OrchestratorError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(exc.exit_code)
