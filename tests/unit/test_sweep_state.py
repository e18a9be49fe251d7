"""A sweep's state survives crashes, hand edits and odd names: reading a sweep never writes its
journal, a torn last line is set aside (and kept) before the next append, a trial's values from the
journal are run only inside the sweep's space, and the sweep directory's name reads back as itself in
every trial's recipe and in best.yaml. (Damaged journals and recipes as one line: test_malformed_inputs.py.)"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import SweepError
from orchestrator.recipe.loader import load_recipe
from orchestrator.sweep.study import claim, open_study
from orchestrator.sweep.trial import trial_args
from tests.helpers.sweeps import SWEEP, add_crafted_trial, make_sweep

TORN = b'{"op_code":7,"worker_id":"w","trial_id":1,"step":10,"interm'
"""What a crash mid-append leaves at the end of the journal: a record cut short, no newline."""


def status(*args: str):
    result = CliRunner().invoke(app, ["sweep", *args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.output


def test_reading_a_sweep_never_writes_its_journal_and_a_torn_tail_is_set_aside_before_the_next_append(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    with sweep.journal.open("ab") as journal:
        journal.write(TORN)
    before = sweep.journal.read_bytes()
    for command in ("status", "report", "status"):
        assert "2 trials (1 complete, 1 running)" in status(command, str(sweep.path))
    assert sweep.journal.read_bytes() == before  # status once appended a create-study record: onto the torn line

    recipe = sweep.read_recipe()
    study = open_study(sweep, recipe.sweep, recipe.name)  # a trial's process: it appends
    study.tell(claim(study, recipe.sweep, 2), 3.0)
    assert sweep.journal.read_bytes().startswith(before[: -len(TORN)]) and TORN not in sweep.journal.read_bytes()
    assert (sweep.path / "study.journal.set-aside").read_bytes() == TORN + b"\n"  # kept, not lost
    assert "3 trials (2 complete, 1 running)" in status("status", str(sweep.path))


@pytest.mark.parametrize("values, says", [
    ({"checkpoint.dir": "/tmp/elsewhere"}, "parameter checkpoint.dir, which the sweep does not search"),
    ({"train.optimizer.lr": 5.0}, "train.optimizer.lr = 5.0, outside the sweep's space"),
    ({"train.schedule.warmup_steps": "5"}, 'train.schedule.warmup_steps = "5", outside the sweep\'s space'),
    ({"train.schedule.warmup_steps": 5.0}, "train.schedule.warmup_steps = 5.0, outside the sweep's space"),
    ({"train.schedule.warmup_steps": None}, "no value for parameter train.optimizer.lr"),
])
def test_a_trial_the_journal_gives_outside_the_sweeps_space_is_refused_before_it_runs(tmp_path, values, says):
    sweep = make_sweep(tmp_path / "sweep")
    recipe = sweep.read_recipe()
    inside = {"train.optimizer.lr": 0.001, "train.schedule.warmup_steps": 5}
    add_crafted_trial(sweep, 2, {**inside, **values} if None not in values.values() else {k: 5 for k in values})
    trial = claim(open_study(sweep, recipe.sweep, recipe.name), recipe.sweep, 2)  # the slot's process resumes it
    with pytest.raises(SweepError, match=re.escape(says)):
        trial_args(trial, sweep, recipe)


@pytest.mark.parametrize("lr", [0.0005, 0.02, 0.001])
def test_a_trial_inside_the_space_runs_with_its_values(lr):
    point = SimpleNamespace(params={"train.optimizer.lr": lr, "train.schedule.warmup_steps": 30})
    args = trial_args(point, SimpleNamespace(path=SWEEP.parent / "s"), load_recipe(SWEEP).recipe)
    loaded = load_recipe(SWEEP, args).recipe
    assert (loaded.train.optimizer.lr, loaded.train.schedule.warmup_steps, loaded.sweep) == (lr, 30, None)


@pytest.mark.parametrize("name", ["odd #name", "[x]", "50% off?#top", "{a: 1}"])
def test_the_sweep_directorys_name_reads_back_as_itself_in_every_trials_recipe(tmp_path, name):
    recipe = load_recipe(SWEEP, ["tracking.mlflow.enabled=true"]).recipe
    sweep = SimpleNamespace(path=tmp_path / name)
    point = SimpleNamespace(params={"train.optimizer.lr": 0.001, "train.schedule.warmup_steps": 5})
    trial = load_recipe(SWEEP, trial_args(point, sweep, recipe)).recipe
    assert trial.tracking.group == name
    assert make_url(trial.tracking.mlflow.tracking_uri).database == str((tmp_path / name / "mlflow.db").resolve())


def test_best_yaml_is_the_best_trials_recipe_whatever_the_sweep_is_called(tmp_path):
    sweep = make_sweep(tmp_path / "s\nname: injected\ntrain: {steps: 1}\n#")
    status("status", str(sweep.path))
    best = sweep.best.read_text()
    assert best.startswith("# The best trial of sweep ") and best.count("\n") == (sweep.trial(0) / "recipe.yaml").read_text().count("\n") + 1
    assert yaml.safe_load(best) == yaml.safe_load((sweep.trial(0) / "recipe.yaml").read_text())


@pytest.mark.parametrize("name, overrides, says", [
    ("a\nb", [], "its name holds a line break"),
    ("x" * 200, ["tracking.wandb.enabled=true"], "tracking.group: string should have at most 128 characters"),
])
def test_a_sweep_directory_name_its_trials_cannot_take_is_refused_at_the_start(tmp_path, name, overrides, says):
    """Before anything is claimed: a trial that cannot be planned once stayed RUNNING in the study."""
    result = CliRunner().invoke(app, ["sweep", str(SWEEP), *overrides, "--local", "--sweep-dir", str(tmp_path / name)])
    assert result.exit_code == 1 and result.output.startswith("error: ") and says in result.output, result.output
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("code, signalled, state", [(143, True, "RUNNING"), (143, False, "FAIL"), (0, True, "COMPLETE")])
def test_an_array_task_cancelled_before_its_ranks_could_checkpoint_leaves_its_trial_unfinished(tmp_path, monkeypatch, code, signalled, state):
    """`scancel` while a trial's ranks were still starting killed them (exit 143, no checkpoint, no 75):
    the trial was told FAIL and never ran again. Stopped by the scheduler, it resumes; a step that
    failed of itself still fails the trial; one the cancel reached as its ranks finished (exit 0: the
    trial trained to its end) is complete, not run again (CI once ran such a trial twice)."""
    import orchestrator.slurm.batch as batch
    from orchestrator.sweep import trial as trial_task
    from orchestrator.sweep.study import slot_trials
    from tests.helpers.planning import write_plan

    sweep = make_sweep(tmp_path / "sweep")
    write_plan(sweep.trial(1))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    (sweep.trial(1) / "metrics.jsonl").write_text('{"step": 4, "loss": 6.9, "val_loss": 6.8}\n')
    monkeypatch.setattr(batch, "run_job_step", lambda run, stop_when: batch.JobStep(code, False, signalled))
    monkeypatch.setattr("sys.argv", ["trial", "--sweep-dir", str(sweep.path)])
    with pytest.raises(SystemExit) as ended:
        trial_task.main()
    assert ended.value.code == code
    recipe = load_recipe(SWEEP).recipe
    assert slot_trials(open_study(sweep, recipe.sweep, recipe.name)).get(1).state.name == state
