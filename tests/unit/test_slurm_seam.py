"""Every Slurm command goes through `orchestrator.slurm.client.slurm`: a recorder in its seam sees
what a code path asks the scheduler (no cluster needed), and no module calls a Slurm command beside it."""

import ast
from datetime import datetime

import pytest

from orchestrator.errors import SlurmError
from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.layout import RunDir
from orchestrator.slurm import client
from orchestrator.slurm.batch import job_end_time, rendezvous
from orchestrator.slurm.submit import cancel, cluster_env, submit
from tests.helpers.planning import make_env
from tests.helpers.project import ROOT, TINY

SLURM_COMMANDS = {"sbatch", "squeue", "scontrol", "scancel", "sacct", "sinfo", "srun", "salloc", "sprio", "sstat"}


class Recorder:
    """Stands in for `client.run_command`: records each command, answers from `answers` (the first
    whose key starts the command), else with success and no output."""

    def __init__(self, answers: dict[tuple[str, ...], client.Answer] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str], timeout_s: float) -> client.Answer:
        self.commands.append(argv)
        return next((answer for start, answer in self.answers.items() if tuple(argv[: len(start)]) == start), client.Answer(0, "", ""))


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(client, "runner", recorder)
    return recorder


def test_the_batch_step_asks_the_scheduler_through_the_seam(recorder):
    recorder.answers = {
        ("scontrol", "show", "hostnames"): client.Answer(0, "n1\nn2\n", ""),
        ("scontrol", "show", "job"): client.Answer(0, "JobId=7 JobState=RUNNING EndTime=2026-12-07T14:00:00\n", ""),
    }
    assert rendezvous(7, "n[1-2]") == ("n1", 20007)
    assert job_end_time(7) == datetime.fromisoformat("2026-12-07T14:00:00").timestamp()
    assert recorder.commands == [["scontrol", "show", "hostnames", "n[1-2]"], ["scontrol", "show", "job", "-o", "7"]]


def test_an_end_time_the_scheduler_cannot_give_is_none(recorder):
    recorder.answers = {("scontrol",): client.Answer(1, "", "slurm_load_jobs error: Unable to contact slurm controller")}
    assert job_end_time(7) is None


def test_an_unreachable_scheduler_is_one_readable_line(monkeypatch):
    def timing_out(argv, timeout_s):
        raise client.subprocess.TimeoutExpired(argv, timeout_s)

    monkeypatch.setattr(client, "runner", timing_out)
    with pytest.raises(SlurmError, match=r"^`scontrol show` did not answer within 60s: is the Slurm controller reachable\?$"):
        rendezvous(7, "n1")


def test_submit_and_cancel_issue_these_commands_in_this_order(tmp_path, recorder):
    """A run whose data is not prepared: every script checked first, then the preparation job,
    training after it, and the gates after training; `orch cancel` then cancels the training job."""
    recorder.answers = {("sbatch", "--parsable"): client.Answer(0, "41;cluster\n", "")}
    loaded = load_recipe(TINY, ["distributed.nodes=2", "distributed.procs_per_node=1"])
    plan = make_plan(loaded, cluster_env(make_env(tmp_path), loaded.recipe.slurm), run_dir=tmp_path / "run")
    assert submit(plan, "/usr/bin/python3", [TINY], then=("gate",)) == ["41", "41", "41"]
    checks = recorder.commands[:3]
    assert [command[:2] for command in checks] == [["sbatch", "--test-only"]] * 3
    run = RunDir(tmp_path / "run")
    assert recorder.commands[3:] == [
        ["sbatch", "--parsable", str(run.prepare_script)],
        ["sbatch", "--parsable", "--dependency=afterok:41", "--kill-on-invalid-dep=yes", str(run.script)],
        ["sbatch", "--parsable", "--dependency=afterok:41", "--kill-on-invalid-dep=yes", str(run.gate_script)],
    ]
    assert cancel(run) == "41" and recorder.commands[-1] == ["scancel", "41"]


def slurm_calls_beside_the_seam(source: str) -> list[int]:
    """Lines of `source` that run a Slurm command without `client.slurm`: a call to a `subprocess`
    or `os` function with a Slurm command's name among its literal arguments."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id in ("subprocess", "os")):
            continue
        literals = {n.value.split()[0] for arg in node.args for n in ast.walk(arg)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.strip()}
        if literals & SLURM_COMMANDS:
            found.append(node.lineno)
    return found


def test_no_module_runs_a_slurm_command_beside_the_seam():
    seam = ROOT / "orchestrator" / "slurm" / "client.py"
    modules = [path for package in ("orchestrator", "launch") for path in sorted((ROOT / package).rglob("*.py")) if path != seam]
    bypasses = {str(path.relative_to(ROOT)): lines for path in modules if (lines := slurm_calls_beside_the_seam(path.read_text()))}
    assert bypasses == {}, f"Slurm commands run beside orchestrator/slurm/client.slurm: {bypasses}"


@pytest.mark.parametrize("call", [
    'subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True)',
    'subprocess.check_output(["squeue", "-h"])',
    'subprocess.Popen(("sbatch", path))',
    'os.system("scancel 41")',
])
def test_the_bypass_check_finds_a_slurm_command_run_directly(call):
    assert slurm_calls_beside_the_seam(f"import os, subprocess\n{call}\n") == [2]


def test_the_bypass_check_leaves_other_commands_alone():
    assert slurm_calls_beside_the_seam('import subprocess\nsubprocess.run(["git", "status"])\nsubprocess.Popen(argv)\n') == []
