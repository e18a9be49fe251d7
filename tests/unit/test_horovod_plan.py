"""Planning for the Horovod backend: its command, its config, and the errors a user meets first."""

import json

import pytest

from launch.engines.horovod import rank_env, slot_hostname
from orchestrator.errors import RecipeError
from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.entry import SAFE_PATH, node_argv
from tests.helpers.planning import make_env
from tests.helpers.project import TINY

HOROVOD = ["distributed.backend=horovod", "distributed.zero_stage=0"]


def plan_for(tmp_path, overrides=(), **env):
    return make_plan(load_recipe(TINY, [*HOROVOD, *overrides]), make_env(tmp_path, **env))


def test_local_launch_is_the_node_launcher_as_on_slurm(tmp_path):
    """No horovodrun: the same node launcher that runs on every Slurm node starts the local ranks."""
    plan = plan_for(tmp_path, ["distributed.compression=fp16", "train.gradient_accumulation_steps=2", "train.global_batch_size=null"])
    (process,) = plan.processes
    assert process.argv[:process.argv.index("launch.node") + 1] == ["/usr/bin/python3", *SAFE_PATH, "-m", "launch.node"]
    assert process.argv[process.argv.index("--backend") + 1] == "horovod" and process.argv[process.argv.index("--nproc") + 1] == "2"
    assert process.argv[-2:] == ["--run-dir", str(plan.run_dir)] and "DS_ACCELERATOR" not in process.env
    config = json.loads(plan.files()["horovod_config.json"])
    assert config["backward_passes_per_step"] == 2 and config["compression"] == "fp16"
    assert "ds_config.json" not in plan.files()


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (["distributed.zero_stage=2"], "distributed.zero_stage", "ZeRO stage 2 exists only on DeepSpeed"),
        (["distributed.offload_optimizer=true"], "distributed.offload_optimizer", "exists only on DeepSpeed"),
        (["distributed.reduction=adasum"], "distributed.reduction", "Adasum needs Horovod's MPI controller"),
        (["distributed.compresion=fp16"], "distributed.compresion", "did you mean `compression`"),
        (["distributed.backend=horovd"], "distributed.backend", "did you mean `horovod`"),
    ],
)
def test_deepspeed_only_and_misspelt_options_are_named(overrides, key, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY, [*HOROVOD, *overrides])
    assert key in str(info.value) and message in str(info.value)


def test_missing_horovod_says_how_to_install_it(tmp_path):
    with pytest.raises(RecipeError, match="make horovod"):
        plan_for(tmp_path, libraries=frozenset({"deepspeed"}))


def test_node_launchers_agree_on_one_rendezvous_without_talking():
    """Each node derives its ranks' Horovod variables alone; together they cover every rank once."""
    envs = [rank_env(2, 2, node, local, "127.0.0.1", 20001) for node in range(2) for local in range(2)]
    assert [int(e["HOROVOD_RANK"]) for e in envs] == [0, 1, 2, 3]
    assert {e["HOROVOD_SIZE"] for e in envs} == {"4"} and {e["HOROVOD_CROSS_SIZE"] for e in envs} == {"2"}
    assert [e["HOROVOD_HOSTNAME"] for e in envs] == [slot_hostname(0)] * 2 + [slot_hostname(1)] * 2
    assert {e["HOROVOD_GLOO_IFACE"] for e in envs} == {"lo"}
    argv = node_argv("/py", "horovod", 2, 2, "/r", "n1", 20001)
    assert argv[argv.index("launch.node") + 1:][:2] == ["--backend", "horovod"]
