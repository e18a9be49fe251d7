"""sbatch rendering across the recipe's options, against golden files (regenerate with ORCH_UPDATE_GOLDEN=1)."""

import os
from pathlib import Path

import pytest

from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.slurm.batch import node_command
from orchestrator.slurm.script import render_sbatch
from orchestrator.slurm.submit import cluster_env, signal_grace_s
from tests.conftest import TINY, make_env, tiny_plan_record

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "minimal": ["distributed.nodes=2", "distributed.procs_per_node=1"],
    "full": [
        "distributed.nodes=4", "distributed.procs_per_node=auto", "train.global_batch_size=128", "train.precision=bf16",
        "slurm.partition=gpu", "slurm.account=proj42", "slurm.qos=high", "slurm.time_limit=04:00:00", "slurm.gpus_per_node=4",
        "slurm.cpus_per_task=32", "slurm.mem=256G", "slurm.constraint=h100", "slurm.exclusive=true",
        "slurm.extra_directives=['--mail-type=END', '#SBATCH --comment=orch']", "slurm.modules=[cuda/12.4, nccl]",
        "slurm.setup=['export NCCL_DEBUG=WARN']", "slurm.venv=/opt/venvs/train", "slurm.signal=USR1", "slurm.signal_grace_s=300",
    ],
}


def render(tmp_path, overrides):
    loaded = load_recipe(TINY, overrides)
    env = cluster_env(make_env(Path("/work")), loaded.recipe.slurm)
    plan = make_plan(loaded, env, run_dir=Path("/shared/runs/tiny"))
    return plan, render_sbatch(plan, loaded.recipe.slurm, "/opt/venvs/train/bin/python", signal_grace_s(tmp_path, loaded.recipe.slurm))


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_matches_golden(tmp_path, case):
    _, script = render(tmp_path, CASES[case])
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
    (tmp_path / "events.jsonl").write_text('{"event": "checkpoint", "stall_s": 40.0, "write_s": 60.0}\n')
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
