"""sbatch rendering across the recipe's options, against golden files (regenerate with ORCH_UPDATE_GOLDEN=1)."""

import json
import os
import shlex
from pathlib import Path

import pytest

from orchestrator.errors import RecipeError, ResumeError, SlurmError
from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.slurm.batch import node_command
from orchestrator.slurm.script import render_sbatch
from orchestrator.slurm.submit import check_pass_env, cluster_env, signal_grace_s, submit_chain
from orchestrator.rundir.rows import CancelRequested, SlurmStart
from tests.helpers.planning import make_env, tiny_plan_record
from tests.helpers.processes import orch
from tests.helpers.project import ROOT, TINY

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "minimal": ["distributed.nodes=2", "distributed.procs_per_node=1"],
    "full": [
        "distributed.nodes=4", "distributed.procs_per_node=auto", "train.global_batch_size=128", "train.precision=bf16",
        "slurm.partition=gpu", "slurm.account=proj42", "slurm.qos=high", "slurm.time_limit=04:00:00", "slurm.gpus_per_node=4",
        "slurm.cpus_per_task=32", "slurm.mem=256G", "slurm.constraint=h100", "slurm.exclusive=true",
        "slurm.extra_directives=['--mail-type=END', '#SBATCH --comment=orch']", "slurm.modules=[cuda/12.4, nccl]",
        "slurm.setup=['export NCCL_DEBUG=WARN']", "slurm.pass_env=[WANDB_API_KEY]", "slurm.venv=/opt/venvs/train", "slurm.signal=USR1", "slurm.signal_grace_s=300",
    ],
}


def render(tmp_path, overrides, run_dir=Path("/shared/runs/tiny")):
    loaded = load_recipe(TINY, overrides)
    env = cluster_env(make_env(Path("/work")), loaded.recipe.slurm)
    plan = make_plan(loaded, env, run_dir=run_dir)
    return plan, render_sbatch(plan, loaded.recipe.slurm, "/opt/venvs/train/bin/python", signal_grace_s(tmp_path, loaded.recipe.slurm))


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_matches_golden(tmp_path, case):
    _, script = render(tmp_path, CASES[case])
    script = script.replace(f"cd {ROOT}\n", "cd /work\n")  # the checkout's place, which varies between machines
    golden = GOLDEN / f"{case}.sbatch"
    if os.environ.get("ORCH_UPDATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text()


def test_gpus_make_one_process_per_gpu_and_nccl(tmp_path):
    plan, script = render(tmp_path, CASES["full"])
    assert plan.topology.procs_per_node == 4 and plan.topology.comm_backend == "nccl"
    assert "DS_ACCELERATOR" not in script and "#SBATCH --gpus-per-node=4" in script


def test_grace_grows_with_measured_checkpoint_time(tmp_path):
    spec = load_recipe(TINY).recipe.slurm
    assert signal_grace_s(tmp_path, spec) == 120
    (tmp_path / "events.jsonl").write_text('{"event": "checkpoint", "step": 10, "stall_s": 40.0, "write_s": 60.0, "bytes": 1000}\n')
    assert signal_grace_s(tmp_path, spec) == 201


@pytest.mark.parametrize("backend", ["deepspeed", "horovod"])
def test_node_command_starts_one_launcher_per_node(tmp_path, backend):
    """Both backends go through the same node launcher under Slurm: no ssh, no horovodrun."""
    topology = {"nodes": 2, "procs_per_node": 4, "device": "cpu", "comm_backend": "gloo", "world_size": 8}
    plan = tiny_plan_record(tmp_path, run_dir="/r", backend=backend, topology=topology)
    argv = node_command(plan, "/py", "n1", 21234)
    assert argv[:4] == ["srun", "--wait=60", "--nodes=2", "--ntasks-per-node=1"]
    assert argv[argv.index("-m") + 1] == "launch.node" and argv[argv.index("--backend") + 1] == backend
    assert argv[argv.index("--nproc") + 1] == "4" and argv[argv.index("--master-addr") + 1] == "n1"
    assert "--node-rank" not in argv  # each node takes SLURM_NODEID
    # Each node launcher's log, added to by every attempt of a requeued job.
    assert argv[4:6] == ["--output=/r/logs/node-%N.out", "--open-mode=append"]


# Every option orch itself writes, plus the recipe's own ones; sbatch reads all of them.
EXPECTED_OPTIONS = {
    "job-name", "nodes", "ntasks-per-node", "output", "open-mode", "signal", "requeue", "partition", "account", "qos",
    "time", "cpus-per-task", "mem", "constraint", "gpus-per-node", "exclusive", "mail-type", "comment",
}
INTENDED_SHELL = ("set -eo pipefail", "module load ", "export NCCL_DEBUG=WARN", ': "${WANDB_API_KEY:?', "source ", "export ",
                  "cd ", "exec ")


def read_back(script: str) -> tuple[list[list[str]], list[str]]:
    """The #SBATCH block as sbatch reads it (each directive split at whitespace), and the shell after it."""
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    block = [shlex.split(line.removeprefix("#SBATCH ")) for line in lines[1:] if line.startswith("#SBATCH")]
    end = 1 + len(block)
    assert all(line.startswith("#SBATCH ") for line in lines[1:end])
    assert not any(line.lstrip().startswith("#SBATCH") for line in lines[end:])  # sbatch would ignore them silently
    return block, [line for line in lines[end:] if line and not line.startswith("#")]


def test_the_script_reads_back_as_expected_directives_then_intended_shell(tmp_path):
    run_dir = Path("/shared/runs/a$(touch${IFS}pwned);b")
    plan, script = render(tmp_path, CASES["full"], run_dir=run_dir)
    block, shell = read_back(script)
    assert all(len(words) == 1 for words in block)
    assert {words[0].removeprefix("--").split("=")[0] for words in block} == EXPECTED_OPTIONS
    assert all(line.startswith(INTENDED_SHELL) for line in shell)
    assert shlex.split(shell[-1])[-2:] == ["--run-dir", str(run_dir)]  # one quoted word, nothing run


@pytest.mark.parametrize("override, path", [
    ('slurm.partition="gpu --account=someone-else"', "slurm.partition"),
    ("slurm.account=proj42;rm", "slurm.account"),
    ('slurm.qos="high --exclusive"', "slurm.qos"),
    ("slurm.time_limit=4h", "slurm.time_limit"),
    ("slurm.mem=64GB", "slurm.mem"),
    ('slurm.constraint="h100 --uid=0"', "slurm.constraint"),
    ("slurm.extra_directives=['-A other']", "slurm.extra_directives.0"),
    ("slurm.extra_directives=['--comment=two words']", "slurm.extra_directives.0"),
    ("slurm.pass_env=['WANDB_API_KEY=x']", "slurm.pass_env.0"),
])
def test_values_sbatch_would_misread_are_refused_with_their_path(override, path):
    with pytest.raises(RecipeError) as error:
        load_recipe(TINY, [override])
    assert [p.path for p in error.value.problems] == [path]


@pytest.mark.parametrize("key", ["partition", "account", "qos", "time_limit", "mem", "constraint", "extra_directives", "modules", "setup"])
def test_a_line_break_in_a_recipe_value_is_refused(tmp_path, key):
    """A YAML string can hold a line break the dotted overrides cannot: it would end the #SBATCH block."""
    value = r"--comment=x\n#SBATCH --account=other\necho pwned"  # YAML reads \n as a line break
    quoted = f'["{value}"]' if key in {"extra_directives", "modules", "setup"} else f'"{value}"'
    recipe = tmp_path / "hostile.yaml"
    recipe.write_text(f"base: {TINY}\nslurm:\n  {key}: {quoted}\n")
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert error.value.problems[0].path.startswith(f"slurm.{key}")
    result = orch("validate", str(recipe))
    assert result.returncode == 1 and f"slurm.{key}" in result.stderr


@pytest.mark.parametrize("run_dir", ["/shared/my runs/tiny", "/shared/runs/a\n#SBATCH --uid=0"])
def test_a_run_directory_an_sbatch_line_cannot_carry_is_refused(tmp_path, run_dir):
    with pytest.raises(SlurmError, match="choose another --run-dir"):
        render(tmp_path, CASES["minimal"], run_dir=Path(run_dir))


@pytest.mark.parametrize("job_id", ["--user=root", "-u", "123 456", "12a"])
def test_a_job_id_that_is_not_one_is_refused_before_scancel(tmp_path, job_id):
    (tmp_path / "slurm.json").write_text(json.dumps({"job_ids": ["41", job_id]}))
    result = orch("cancel", str(tmp_path))
    assert result.returncode == 1 and "is not a Slurm job id" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_pass_env_must_be_set_where_orch_submit_runs():
    spec = load_recipe(TINY, ["slurm.pass_env=[WANDB_API_KEY, HF_TOKEN]"]).recipe.slurm
    check_pass_env(spec, {"WANDB_API_KEY": "x", "HF_TOKEN": "y"})
    with pytest.raises(SlurmError, match="HF_TOKEN, not set here"):
        check_pass_env(spec, {"WANDB_API_KEY": "x"})


def test_the_object_stores_credentials_reach_the_job_by_name_and_must_be_set_where_orch_submit_runs(tmp_path, monkeypatch):
    remote = ["checkpoint.remote.url=s3://bucket/run-a", "checkpoint.remote.env=[AWS_ACCESS_KEY_ID, WANDB_API_KEY]"]
    plan, script = render(tmp_path, [*CASES["full"], *remote])
    _, without = render(tmp_path, CASES["full"])
    checks = [line for line in script.splitlines() if line.startswith(': "${')]
    assert checks == [': "${WANDB_API_KEY:?is not set in the job: export it where orch submit runs (slurm.pass_env)}"',
                      ': "${AWS_ACCESS_KEY_ID:?is not set in the job: export it where orch submit runs (checkpoint.remote.env)}"']
    assert script.replace(checks[1] + "\n", "").replace(plan.recipe_hash, "H") == without.replace(render(tmp_path, CASES["full"])[0].recipe_hash, "H")
    monkeypatch.setenv("WANDB_API_KEY", "x")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(ResumeError, match="checkpoint.remote.env names AWS_ACCESS_KEY_ID, not set here: export it before orch submit"):
        submit_chain(plan, "/opt/venvs/train/bin/python", [], ("train", script), [])  # before sbatch is asked anything
    result = orch("submit", str(TINY), *remote, "--skip-doctor", "--run-dir", str(tmp_path / "run"))
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        "error: checkpoint.remote.env names AWS_ACCESS_KEY_ID, not set here: export it before orch submit "
        "(the value is read from the environment and written nowhere)"]


def test_a_cancelled_job_is_not_requeued_after_its_checkpoint(tmp_path):
    """`orch cancel` reaches the batch step as SIGTERM, like a preemption; only its event tells them apart."""
    from orchestrator.rundir import events
    from orchestrator.rundir.layout import RunDir
    from orchestrator.slurm.batch import cancel_requested

    run = RunDir(tmp_path)
    events.append(run.events, SlurmStart(job_id=7))
    assert not cancel_requested(run, 7)
    events.append(run.events, CancelRequested(job_id="8"))
    assert not cancel_requested(run, 7) and cancel_requested(run, 8)
