"""Sweeps without training: the search space checked against the recipe, the grid's slots, claiming
trials from a real Optuna journal (a re-run resumes its slot's trial and never asks for a second),
the pruning judge, and the Slurm scripts of an array and a `--then` chain."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import RecipeError, SlurmError, SweepError
from orchestrator.starting.execute import prepare_run
from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.entry import SAFE_PATH
from orchestrator.rundir.records import JobsRecord
from orchestrator.slurm.client import Job
from orchestrator.slurm.script import array_ranges, render_array_sbatch, render_step_sbatch
from orchestrator.slurm.submit import cluster_env, parse_then
from orchestrator.watching.status import RunStatus, with_jobs
from orchestrator.sweep.space import check_space, trial_overrides
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.start import plan_sweep, unfinished_slots
from orchestrator.sweep.study import Judge, SweepDir, claim, final_value, grid_point, open_study, slot_trials
from tests.helpers.planning import make_env
from tests.helpers.processes import orch
from tests.helpers.project import RECIPES, ROOT

SWEEP = RECIPES / "tiny-sweep.yaml"


def sweep_file(tmp_path: Path, parameters: dict, **sweep) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(RECIPES / "tiny-pretrain.yaml"), "sweep": {"parameters": parameters, **sweep}}))
    return path


def test_the_shipped_sweep_validates_and_its_space_loads_at_every_end():
    loaded = load_recipe(SWEEP)
    check_space(loaded, SWEEP, [])
    result = orch("validate", str(SWEEP))
    assert result.returncode == 0, result.stderr


def test_a_mistyped_parameter_gets_the_loaders_did_you_mean_at_its_line(tmp_path):
    path = sweep_file(tmp_path, {"train.optimzer.lr": {"log_uniform": [0.001, 0.01]}})
    result = orch("validate", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{path}:4" in line and "did you mean `optimizer`" in line and "sweep parameter train.optimzer.lr" in line


def test_a_range_over_a_word_is_refused_and_a_bad_choice_is_told_at_its_parameter(tmp_path):
    ranged = sweep_file(tmp_path, {"train.optimizer.name": {"uniform": [0.1, 0.2]}})
    with pytest.raises(RecipeError, match="a range needs a numeric key; train.optimizer.name is not a number"):
        check_space(load_recipe(ranged), ranged, [])
    chosen = sweep_file(tmp_path, {"distributed.zero_stage": {"choices": [2, 7]}})
    with pytest.raises(RecipeError, match=r"sweep parameter distributed.zero_stage = 7"):
        check_space(load_recipe(chosen), chosen, [])


@pytest.mark.parametrize("sweep, message", [
    ({"parameters": {"train.steps": {"choices": [10], "int": [1, 5]}}}, "exactly one of"),
    ({"parameters": {"train.optimizer.lr": {"log_uniform": [0, 1]}}}, "positive low end"),
    ({"parameters": {"train.optimizer.lr": {"uniform": [0.2, 0.1]}}}, "low < high"),
    ({"parameters": {"train.optimizer.lr": {"uniform": [0.1, 0.2]}}, "sampler": "grid"}, "needs choices for every parameter"),
    ({"parameters": {"train.steps": {"choices": [10, 20]}}, "sampler": "grid", "trials": 3}, "the grid has 2 points"),
    ({"parameters": {"train.steps": {"choices": [10, 20]}}, "trials": 2, "parallel": 3}, "lower sweep.parallel"),
])
def test_an_impossible_sweep_section_is_one_line(tmp_path, sweep, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(RECIPES / "tiny-pretrain.yaml"), "sweep": sweep}))
    result = orch("validate", str(path))
    assert result.returncode == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_grid_slots_walk_the_grid_in_order_and_overrides_read_back():
    spec = SweepSpec.model_validate({"parameters": {"a.b": {"choices": [1, 2]}, "c": {"choices": ["x", "y", "z"]}}, "sampler": "grid", "trials": 6})
    assert [grid_point(spec, slot) for slot in (0, 1, 3, 5)] == [{"a.b": 1, "c": "x"}, {"a.b": 1, "c": "y"}, {"a.b": 2, "c": "x"},
                                                               {"a.b": 2, "c": "z"}]
    overrides = trial_overrides({"train.optimizer.lr": 0.0005, "train.optimizer.name": "adamw"})
    loaded = load_recipe(RECIPES / "tiny-pretrain.yaml", overrides)
    assert loaded.recipe.train.optimizer.lr == 0.0005


def test_a_slot_keeps_its_trial_across_claims_and_a_finished_one_is_never_asked_again(tmp_path):
    spec = SweepSpec.model_validate({"parameters": {"train.optimizer.lr": {"log_uniform": [1e-4, 1e-2]}}, "trials": 3, "sampler": "random"})
    sweep = SweepDir(tmp_path / "sweep")
    study = open_study(sweep, spec, "s")
    first = claim(study, spec, 0)
    again = claim(open_study(sweep, spec, "s"), spec, 0)  # a requeued task, or a re-run sweep: another process
    assert again.number == first.number and again.params == first.params
    other = claim(study, spec, 1)
    assert other.number != first.number
    study.tell(first, 1.5)
    assert claim(study, spec, 0) is None
    assert sorted(slot_trials(open_study(sweep, spec, "s"))) == [0, 1] and sweep.journal.exists()


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_each_slot_draws_its_own_point_whichever_process_asks_and_in_whatever_order(tmp_path, sampler):
    """Array tasks are separate processes, each opening the study afresh: the same sampler seed in
    each once gave every task the same first draw. A slot's draw is its own, and the same again."""
    spec = SweepSpec.model_validate({"parameters": {"train.optimizer.lr": {"log_uniform": [1e-4, 1e-2]},
                                                    "train.schedule.warmup_steps": {"choices": [5, 15, 30]}},
                                     "trials": 4, "sampler": sampler})
    def draws(sweep: SweepDir, slots: list[int]) -> dict[int, dict]:
        return {slot: claim(open_study(sweep, spec, "s"), spec, slot).params for slot in slots}  # a fresh study: a task's process

    first = draws(SweepDir(tmp_path / "a"), [0, 1, 2, 3])
    assert len({params["train.optimizer.lr"] for params in first.values()}) == 4, first
    assert draws(SweepDir(tmp_path / "b"), [3, 1, 0, 2]) == first  # reproducible: the slot fixes the draw, not the order
    reseeded = spec.model_copy(update={"seed": 1})
    assert claim(open_study(SweepDir(tmp_path / "c"), reseeded, "s"), reseeded, 0).params != first[0]


def test_a_finished_sweep_takes_more_trials_and_time_but_not_another_space_or_recipe(tmp_path):
    """Re-running with more trials (or a longer time limit) continues the same study with the new
    slots only; a changed space or recipe is refused with what changed."""
    path = sweep_file(tmp_path, {"train.optimizer.lr": {"log_uniform": [1e-4, 1e-2]}}, trials=3)
    sweep_dir = tmp_path / "sweep"
    loaded, plan, _ = plan_sweep(path, [], sweep_dir, for_slurm=False)
    prepare_run(plan, [], with_data=False)
    sweep = SweepDir(sweep_dir)
    study = open_study(sweep, loaded.recipe.sweep, loaded.recipe.name)
    for slot in range(3):
        study.tell(claim(study, loaded.recipe.sweep, slot), 3.0 + slot)
    assert unfinished_slots(sweep, loaded) == []

    more, plan, _ = plan_sweep(path, ["sweep.trials=4", "sweep.parallel=2", "slurm.time_limit=02:00:00"], sweep_dir, for_slurm=False)
    prepare_run(plan, [], with_data=False)
    assert unfinished_slots(sweep, more) == [3] and sweep.read_recipe().sweep.trials == 4
    for change, what in (("sweep.parameters={train.optimizer.lr: {log_uniform: [0.001, 0.01]}}", "sweep.parameters.train.optimizer.lr"),
                         ("sweep.sampler=random", "sweep.sampler: 'tpe' -> 'random'"), ("train.steps=70", "train.steps: 150 -> 70")):
        with pytest.raises(SweepError, match=rf"holds a sweep of another recipe or search space \(.*{re.escape(what)}"):
            plan_sweep(path, ["sweep.trials=4", change], sweep_dir, for_slurm=False)


@pytest.mark.parametrize("path", ["sweeps/tiny-sweep/study.journal", "runs/tiny-pretrain/plan.json"])
def test_the_default_sweep_directory_is_ignored_by_git_as_runs_is(path):
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


def test_the_judge_reports_each_evaluation_once_and_prunes_a_diverged_trial_at_once(tmp_path):
    spec = SweepSpec.model_validate({"parameters": {"x": {"choices": [1, 2]}}, "trials": 2, "pruner": {"kind": "none"}})
    study = open_study(SweepDir(tmp_path), spec, "s")
    trial = claim(study, spec, 0)
    judge = Judge(trial, "val_loss")
    assert not judge.observe([{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0, "val_loss": 4.5}])
    assert not Judge(trial, "val_loss").observe([{"step": 2, "val_loss": 4.5}])  # resumed: step 2 is not reported twice
    assert judge.observe([{"step": 4, "val_loss": math.inf}]) and judge.pruned_at == 4 and judge.why == "val_loss inf at step 4 was not finite"
    (frozen,) = study.get_trials()
    assert frozen.intermediate_values[2] == 4.5 and math.isnan(frozen.intermediate_values[4])
    bounded = Judge.of(claim(study, spec, 1), spec.model_copy(update={"pruner": spec.pruner.model_copy(update={"diverged_above": 20.0})}))
    assert not bounded.observe([{"step": 2, "val_loss": 19.0}]) and bounded.observe([{"step": 4, "val_loss": 38448.9}])
    assert bounded.why == "val_loss 3.845e+04 at step 4 was past diverged_above 20"
    assert final_value([{"step": 2, "val_loss": 4.5}, {"step": 3}, {"step": 4, "val_loss": 4.0}], "val_loss") == 4.0


def test_the_median_pruner_stops_a_trial_behind_the_finished_ones(tmp_path):
    spec = SweepSpec.model_validate({"parameters": {"x": {"choices": [1, 2, 3]}}, "trials": 3, "pruner": {"kind": "median", "startup_trials": 1}})
    study = open_study(SweepDir(tmp_path), spec, "s")
    done = claim(study, spec, 0)
    Judge(done, "val_loss").observe([{"step": 10, "val_loss": 3.0}])
    study.tell(done, 3.0)
    assert not Judge(claim(study, spec, 1), "val_loss").observe([{"step": 10, "val_loss": 2.5}])
    behind = Judge(claim(study, spec, 2), "val_loss")
    assert behind.observe([{"step": 10, "val_loss": 3.5}]) and behind.why == "val_loss 3.5 at step 10 was behind the other trials by the pruner's rule"


def test_a_pruned_trial_submitted_to_slurm_shows_pruned_not_its_tasks_completed(tmp_path):
    pruned = RunStatus(tmp_path, "tiny-sweep", "PRUNED", 3, 6, 7.5, 0, job_id="41", jobs=(("train", "41"),))
    assert with_jobs(pruned, {"41": Job("COMPLETED", 0)}).state == "PRUNED" and pruned.finished


def test_array_ranges_and_the_array_script(tmp_path):
    assert array_ranges([0, 1, 2, 3]) == "0-3" and array_ranges([5, 1, 4, 6]) == "1,4-6" and array_ranges([2]) == "2"
    loaded = load_recipe(SWEEP, ["distributed.nodes=2", "distributed.procs_per_node=1", "slurm.partition=debug"])
    plan = make_plan(loaded, cluster_env(make_env(Path("/work")), loaded.recipe.slurm), run_dir=Path("/shared/sweeps/lr"))
    script = render_array_sbatch(plan, loaded.recipe.slurm, "/venv/bin/python", 120, [1, 2, 3], 2)
    lines = script.splitlines()
    assert "#SBATCH --array=1-3%2" in lines and "#SBATCH --nodes=2" in lines and "#SBATCH --partition=debug" in lines
    assert shlex.split(lines[-1]) == ["exec", "/venv/bin/python", *SAFE_PATH, "-m", "orchestrator.sweep.trial", "--sweep-dir", "/shared/sweeps/lr"]
    gate = render_step_sbatch(plan, loaded.recipe.slurm, "/venv/bin/python", "gate", ["sweep", "gate", "/shared/sweeps/lr"]).splitlines()
    assert "#SBATCH --nodes=1" in gate and "#SBATCH --output=/shared/sweeps/lr/logs/gate-%j.out" in gate
    assert shlex.split(gate[-1])[-4:] == ["orchestrator", "sweep", "gate", "/shared/sweeps/lr"]


def test_then_takes_gate_or_gate_and_release_only_and_a_sweeps_runs_here_too():
    assert parse_then(None) == () and parse_then("gate") == ("gate",) and parse_then("gate, release") == ("gate", "release")
    sweep_help = " ".join(word for word in CliRunner().invoke(app, ["sweep", "--help"]).output.split() if word != "│")  # unboxed
    assert "the best trial: here after the last trial, or with --slurm as jobs that wait for the whole array" in sweep_help, sweep_help
    for bad in ("release", "release,gate", "gate,gate", "deploy"):
        with pytest.raises(SlurmError, match="give `gate` or `gate,release`"):
            parse_then(bad)


def test_a_job_record_keeps_each_jobs_part_and_an_old_one_reads_as_training_jobs():
    chain = JobsRecord(job_ids=["11", "12", "13"], kinds=["prepare", "train", "gate"])
    assert chain.of_kind("train") == ["12"] and chain.chain()[2] == ("gate", "13")
    assert JobsRecord(job_ids=["7", "8"]).of_kind("train") == ["7", "8"]
    with pytest.raises(ValueError, match="2 kinds for 3 job ids"):
        JobsRecord(job_ids=["1", "2", "3"], kinds=["prepare", "train"])
