"""`orch status` and `orch runs` read the run directory (no scheduler involved for local runs), and ask
the scheduler once, whatever the number of Slurm runs (a fake `squeue` on PATH counts the calls)."""

import json
import os

from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.records import recipe_yaml
from tests.helpers.project import TINY


def fake_run(root, name, events, rows, summary=None, jobs=None, recipe_name=None):
    run = root / name
    (run / "logs").mkdir(parents=True)
    (run / "recipe.yaml").write_text(recipe_yaml(load_recipe(TINY, [f"name={recipe_name or name}", "train.steps=10", "train.schedule.warmup_steps=2"]).recipe))
    (run / "events.jsonl").write_text("".join(json.dumps({"event": e, "time": 0}) + "\n" for e in events))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": l}) + "\n" for s, l in rows))
    if summary:
        (run / "summary.json").write_text(json.dumps(summary))
    if jobs:
        (run / "slurm.json").write_text(json.dumps({"job_ids": list(jobs), "kinds": list(jobs.values())}))
    return run


def test_status_and_runs_table(tmp_path):
    done = fake_run(tmp_path, "done", ["start", "start", "completed"], [(9, 2.5), (10, 2.0)], {"status": "completed"})
    fake_run(tmp_path, "stopped", ["start", "preempted"], [(1, 7.0)])
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(done)])
    assert status.exit_code == 0
    assert status.output.strip() == f"done: COMPLETED, step 10/10, loss 2.0000, restarts 1  ({done})"
    table = runner.invoke(app, ["runs", str(tmp_path)])
    assert "PREEMPTED" in table.output and "COMPLETED" in table.output
    only = runner.invoke(app, ["runs", str(tmp_path), "--state", "preempted"])
    assert "stopped" in only.output and "done " not in only.output


def test_a_completed_run_resumed_for_more_steps_is_training_not_completed(tmp_path):
    longer = fake_run(tmp_path, "longer", ["start", "completed", "start"], [(10, 2.0)], {"status": "completed"})
    assert "STARTED" in CliRunner().invoke(app, ["status", str(longer)]).output


def test_status_of_a_non_run_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "not a run directory" in result.output


UNREACHABLE = "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1"


def fake_squeue(tmp_path, monkeypatch, body: str):
    """`squeue` on PATH running `body` (sh), each call's arguments appended to the returned file."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "squeue-calls"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n{body}\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def slurm_runs(root):
    """Three submitted runs of the default recipe (one `--run-dir` each) and one local run."""
    fake_run(root, "lr-high", ["start"], [(4, 3.0)], jobs={"11": "train"}, recipe_name="tiny-pretrain")
    fake_run(root, "lr-low", ["start"], [(5, 3.5)], jobs={"12": "train", "13": "gate"}, recipe_name="tiny-pretrain")
    fake_run(root, "baseline", ["start"], [(6, 2.5)], jobs={"14": "train"}, recipe_name="tiny-pretrain")
    fake_run(root, "local", ["start", "completed"], [(10, 2.0)], {"status": "completed"})


def test_runs_asks_an_unreachable_scheduler_once_and_says_so_once(tmp_path, monkeypatch):
    slurm_runs(tmp_path / "runs")
    calls = fake_squeue(tmp_path, monkeypatch, UNREACHABLE)
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert calls.read_text().count("\n") == 1 and "--jobs=11,12,13,14" in calls.read_text()
    assert result.output.count("scheduler unreachable") == 1 and "connect failure" in result.output
    assert all(name in result.output for name in ("lr-high", "lr-low", "baseline", "local"))
    assert result.output.count("STARTED") == 3  # each Slurm run's state as its directory records it


def test_runs_filters_before_asking_the_scheduler(tmp_path, monkeypatch):
    """`--name` matches the run directory's name too (every run here is the recipe tiny-pretrain), and
    only the runs it keeps are asked about."""
    slurm_runs(tmp_path / "runs")
    calls = fake_squeue(tmp_path, monkeypatch, 'printf "12|RUNNING|0|\\n13|PENDING|0|\\n"')
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--name", "LR-"])
    assert result.exit_code == 0, result.output
    assert calls.read_text().split() == ["--jobs=11,12,13", "--states=all", "--noheader", "--Format=ArrayJobID:|,State:|,exit_code:|"]
    assert "lr-high" in result.output and "lr-low" in result.output and "baseline" not in result.output
    assert "RUNNING" in result.output and "scheduler unreachable" not in result.output
    by_recipe = CliRunner().invoke(app, ["runs", str(tmp_path / "runs"), "--name", "tiny-pre"])
    assert all(name in by_recipe.output for name in ("lr-high", "lr-low", "baseline")) and "local" not in by_recipe.output
    assert "run directory name" in CliRunner().invoke(app, ["runs", "--help"]).output


def test_runs_of_local_runs_never_ask_the_scheduler(tmp_path, monkeypatch):
    fake_run(tmp_path / "runs", "local", ["start", "completed"], [(10, 2.0)], {"status": "completed"})
    calls = fake_squeue(tmp_path, monkeypatch, UNREACHABLE)
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")])
    assert result.exit_code == 0 and "COMPLETED" in result.output and not calls.exists()


def test_status_asks_once_for_every_job_of_a_chain(tmp_path, monkeypatch):
    slurm_runs(tmp_path / "runs")
    calls = fake_squeue(tmp_path, monkeypatch, 'printf "12|COMPLETED|0|\\n13|FAILED|1024|\\n"')
    result = CliRunner().invoke(app, ["status", str(tmp_path / "runs" / "lr-low")])
    assert result.exit_code == 0, result.output
    assert calls.read_text().count("\n") == 1
    assert "tiny-pretrain: COMPLETED, step 5/10" in result.output and "jobs: train 12 COMPLETED -> gate 13 FAILED (exit 4)" in result.output


def test_status_with_an_unreachable_scheduler_is_the_directory_state_marked(tmp_path, monkeypatch):
    slurm_runs(tmp_path / "runs")
    calls = fake_squeue(tmp_path, monkeypatch, UNREACHABLE)
    result = CliRunner().invoke(app, ["status", str(tmp_path / "runs" / "lr-low")])
    assert result.exit_code == 0, result.output
    assert calls.read_text().count("\n") == 1 and result.output.count("scheduler unreachable") == 1
    assert "tiny-pretrain: STARTED (scheduler unreachable), step 5/10" in result.output and "train 12 ? -> gate 13 ?" in result.output
