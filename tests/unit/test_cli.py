"""The CLI: readable one-line errors and exit codes, never a traceback, and no heavy imports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.helpers.project import TINY

runner = CliRunner()


def test_validate_ok():
    result = runner.invoke(app, ["validate", str(TINY)])
    assert result.exit_code == 0, result.output
    assert "valid (tiny-pretrain" in result.output


def test_validate_reports_every_problem_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {TINY}\nname: bad\ntrain:\n  setps: 3\n")
    result = runner.invoke(app, ["validate", str(bad), "distributed.zero_stage=4"])
    assert result.exit_code == 1
    assert f"error: {bad}:4: train.setps: unknown key; did you mean `steps`?" in result.output
    assert "distributed.zero_stage" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_checks_batch_arithmetic():
    result = runner.invoke(app, ["validate", str(TINY), "train.global_batch_size=12"])
    assert result.exit_code == 1
    assert "not divisible" in result.output


def test_missing_recipe_is_one_line():
    result = runner.invoke(app, ["validate", "no/such/recipe.yaml"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: recipe file not found: no/such/recipe.yaml"


def test_plan_json_is_machine_readable():
    result = runner.invoke(app, ["plan", str(TINY), "--json", "train.steps=40"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["batch"]["global_batch_size"] == 16 and plan["backend_files"]["ds_config.json"]["zero_optimization"]["stage"] == 2


def test_plan_text():
    result = runner.invoke(app, ["plan", str(TINY)])
    assert result.exit_code == 0
    assert "world size 2" in result.output and "memory/device" in result.output


def test_light_commands_do_not_import_torch():
    """`orch --help`, `validate` and `plan` must stay fast: none of them may import torch or deepspeed."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom orchestrator.cli import app\n"
        f"r = CliRunner()\nfor args in (['--help'], ['validate', {str(TINY)!r}], ['plan', {str(TINY)!r}]):\n"
        "    assert r.invoke(app, args).exit_code == 0, args\n"
        "heavy = [m for m in ('torch', 'deepspeed', 'transformers', 'datasets') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_node_launcher_starts_its_ranks_without_importing_torch():
    """It imports its backend's module for the node hooks alone; torch would cost seconds before every start."""
    code = (
        "import sys\nfrom launch.engines import ENGINES, backend_module\n"
        "for name in ENGINES:\n    backend_module(name).rank_env(2, 2, 1, 0, '127.0.0.1', 29500)\n"
        "print(','.join(m for m in ('torch', 'deepspeed', 'transformers', 'horovod') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_validate_refuses_only_what_cannot_run(tmp_path):
    """A plan that will not fit as written stays a warning (offload or ZeRO-3 fixes it); one that no
    offload can fit, or whose activations alone pass a device's memory, is a problem for `validate`."""
    from orchestrator.shared.env import GpuInfo
    from orchestrator.plan.load import cannot_run
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe
    from tests.helpers.planning import make_env

    def plan(*overrides):
        loaded = load_recipe(TINY, ["distributed.procs_per_node=1", *overrides])
        return loaded, make_plan(loaded, make_env(tmp_path, gpus=(GpuInfo("NVIDIA A10", 24 * 2**30, 8.6),)))

    tight = plan("model.hidden_size=2048", "model.num_layers=28", "model.num_heads=16", "model.intermediate_size=5504",
                 "train.precision=bf16", "train.global_batch_size=8", "distributed.zero_stage=0")
    assert not tight[1].memory.fits and cannot_run(*tight) == []
    state = cannot_run(*plan("model.hidden_size=65536", "model.num_layers=1000", "model.num_heads=64"))[0]
    assert state.path == "model" and "no offload can fit it" in state.message
    (activations,) = cannot_run(*plan("train.micro_batch_size=65536", "train.global_batch_size=65536"))
    assert activations.path == "train.micro_batch_size" and "cannot be offloaded" in activations.message


def test_fresh_sets_an_earlier_run_aside_but_refuses_other_directories(tmp_path):
    from orchestrator.shared.checkpoint.resume import check_run_dir, set_run_aside
    from orchestrator.errors import ResumeError

    earlier = tmp_path / "runs" / "tiny"
    earlier.mkdir(parents=True)
    (earlier / "plan.json").write_text("{}")
    check_run_dir(earlier, fresh=True)
    assert set_run_aside(earlier).name.startswith("tiny.set-aside-") and not earlier.exists()
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty", fresh=True)  # nothing there to lose
    (tmp_path / "notes.txt").write_text("mine")
    for directory, fresh in ((tmp_path, True), (Path("/"), False)):
        with pytest.raises(ResumeError):
            check_run_dir(directory, fresh)


@pytest.mark.parametrize("case", ["cannot run", "sweep space"])
def test_plan_refuses_what_validate_refuses_after_showing_the_plan(tmp_path, case):
    """`plan` exited 0 where `validate` with the same overrides exited 1: now both fail, with the same lines."""
    if case == "cannot run":  # the activations alone exceed a device's memory
        args = [str(TINY), "train.micro_batch_size=65536", "train.global_batch_size=131072"]
    else:
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(f"base: {TINY.parent / 'tiny-sweep.yaml'}\nsweep:\n  parameters:\n    train.optimizer.lrr: {{choices: [0.001]}}\n")
        args = [str(sweep)]
    validated, planned = runner.invoke(app, ["validate", *args]), runner.invoke(app, ["plan", *args])
    assert validated.exit_code == planned.exit_code == 1, planned.output
    errors = [line for line in validated.output.splitlines() if line.startswith("error: ")]
    assert errors and [line for line in planned.stderr.splitlines() if line.startswith("error: ")] == errors
    assert "memory/device" in planned.stdout  # the plan is shown, with the arithmetic behind the problem


def test_plan_for_slurm_cpu_nodes_forecasts_and_says_what_it_assumes():
    """It said "0 tokens/s ... wall unknown" and "0 kWh"."""
    result = runner.invoke(app, ["plan", str(TINY), "--slurm", "slurm.cpus_per_task=4"])
    assert result.exit_code == 0, result.output
    estimate = result.stdout[result.stdout.index("estimate"):result.stdout.index("grid ")]
    assert " 0 tokens/s" not in estimate and "unknown" not in estimate and " 0 kWh" not in estimate
    assert "4 cores per node, each as fast as this machine's" in estimate and "-> wall 0h" in estimate


def test_submit_emit_only_warns_of_an_inline_secret_as_validate_and_plan_do():
    setup = "slurm.setup=['export WANDB_API_KEY=0123456789abcdef0123456789abcdef01234567']"
    for command in (["validate"], ["plan"], ["submit", "--emit-only"]):
        result = runner.invoke(app, [*command, str(TINY), setup])
        assert result.exit_code == 0, result.output
        assert "slurm.setup[0]" in result.output and "slurm.pass_env" in result.output, command
    assert "#SBATCH" in result.stdout and "warning:" not in result.stdout and "warning:" in result.stderr  # the script alone on stdout
