"""One live attempt per run directory: the lock, who holds it, how long it lives; a dry run's own directory."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.starting.attempt import hold_attempt
from orchestrator.cli import app
from orchestrator.errors import EXIT_RUN_BUSY, LaunchError, ResumeError, RunBusy
from orchestrator.starting.local import LocalRunRequest, plan_local_run
from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.slurm.batch import node_command
from tests.helpers.planning import make_env, tiny_plan_record, write_plan
from tests.helpers.project import TINY

HOLD = "import sys; from pathlib import Path; from orchestrator.starting.attempt import hold_attempt; a = hold_attempt(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()"


def hold_in_child(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run directory, until its stdin closes or it is killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def wait_until_free(run_dir: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            hold_attempt(run_dir).close()
            return
        except RunBusy:
            assert time.monotonic() < deadline, f"{run_dir} still held after {timeout_s}s"
            time.sleep(0.05)


def test_a_second_attempt_is_refused_naming_the_first(tmp_path):
    with hold_attempt(tmp_path / "run"):
        with pytest.raises(RunBusy, match=rf"in use by a live attempt: orch run pid {os.getpid()} on \S+ since 20\d\d-"):
            hold_attempt(tmp_path / "run")


def test_a_file_is_no_run_directory(tmp_path):
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(LaunchError, match="notes: cannot be a run directory"):
        hold_attempt(tmp_path / "notes")


def test_the_lock_goes_with_its_holder_however_it_dies(tmp_path):
    child = hold_in_child(tmp_path)
    with pytest.raises(RunBusy, match=f"pid {child.pid}"):
        hold_attempt(tmp_path)
    child.kill()
    child.wait()
    wait_until_free(tmp_path)


def test_a_process_started_with_the_lock_keeps_it_after_its_starter_dies(tmp_path):
    """What `orch run` does for its node launcher: the launcher shares the open lock file."""
    starter = """
import subprocess, sys
from pathlib import Path
from orchestrator.starting.attempt import hold_attempt
a = hold_attempt(Path(sys.argv[1]))
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=(a.fd,))
a.add_process(child.pid)
print(child.pid, flush=True)
sys.stdin.read()
"""
    parent = subprocess.Popen([sys.executable, "-c", starter, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    launcher = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    with pytest.raises(RunBusy, match=rf"that orch run has exited.*kill -TERM {launcher}"):
        hold_attempt(tmp_path)
    os.kill(launcher, signal.SIGKILL)
    wait_until_free(tmp_path)


def test_orch_run_is_refused_while_another_attempt_lives(tmp_path):
    run_dir = tmp_path / "run"
    child = hold_in_child(run_dir)
    try:
        result = CliRunner().invoke(app, ["run", str(TINY), "--run-dir", str(run_dir)])
    finally:
        child.stdin.close()
        child.wait()
    assert result.exit_code == EXIT_RUN_BUSY, result.output
    assert f"in use by a live attempt: orch run pid {child.pid}" in result.output
    assert not (run_dir / "plan.json").exists()


def test_the_local_launcher_is_attached_unless_detached_and_never_under_slurm(tmp_path):
    loaded = load_recipe(TINY)
    assert "--attached" in make_plan(loaded, make_env(tmp_path)).processes[0].argv
    assert "--attached" not in make_plan(loaded, make_env(tmp_path)).detached().processes[0].argv
    assert "--attached" not in node_command(tiny_plan_record(tmp_path), "/py", "n1", 20001)


def test_a_dry_run_has_its_own_directory(tmp_path):
    env = make_env(tmp_path)
    assert make_plan(load_recipe(TINY), env, dry_run=True).run_dir == env.cwd / "runs" / "tiny-pretrain-dry-run"
    assert make_plan(load_recipe(TINY), env, run_dir=tmp_path / "mine", dry_run=True).run_dir == tmp_path / "mine-dry-run"


def test_a_dry_run_always_starts_over(tmp_path):
    previous = tmp_path / "run-dry-run"
    write_plan(previous, dry_run=True)
    (previous / "metrics.jsonl").write_text('{"step": 5}\n')
    said = []
    _, plan, attempt = plan_local_run(LocalRunRequest(recipe=TINY, overrides=[], run_dir=tmp_path / "run", dry_run=True), said.append)
    attempt.close()
    assert plan.run_dir == previous and not (previous / "metrics.jsonl").exists()
    assert said[0] == f"removed the previous dry run in {previous}"


def test_run_refuses_a_directory_of_the_users_own_and_writes_nothing_there(tmp_path):
    """`--run-dir .` where the user keeps a recipe: a run would overwrite it and write its plan and
    logs beside it. A directory holding a plan or an attempt's lock is a run's and is taken."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "recipe.yaml").write_text("# mine\n")
    for fresh in (False, True):
        with pytest.raises(ResumeError, match="not a run directory .* and not empty"):
            plan_local_run(LocalRunRequest(recipe=TINY, overrides=[], run_dir=project, fresh=fresh), lambda line: None)
    assert sorted(p.name for p in project.iterdir()) == ["recipe.yaml"] and (project / "recipe.yaml").read_text() == "# mine\n"
    hold_attempt(project).close()  # an attempt's lock: a run that stopped before writing its plan
    _, plan, attempt = plan_local_run(LocalRunRequest(recipe=TINY, overrides=[], run_dir=project), lambda line: None)
    attempt.close()
    assert plan.run_dir == project
