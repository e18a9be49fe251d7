"""The CLI: readable one-line errors and exit codes, never a traceback, and no heavy imports."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import TINY

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
