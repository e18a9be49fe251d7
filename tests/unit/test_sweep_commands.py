"""`orch sweep` is a command group whose first argument may be the recipe itself: `orch sweep RECIPE
...` runs the sweep (as `orch sweep run RECIPE ...`), and `orch sweep status|report|gate|release DIR`
each reach their own command. Bad input is one line and a non-zero exit."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.helpers.sweeps import make_sweep

runner = CliRunner()
COMMANDS = ("run", "status", "report", "gate", "release")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Trial 0 complete (no checkpoint: gate and release stop at their first check), trial 1 running."""
    return make_sweep(tmp_path_factory.mktemp("sweep-commands") / "sweep")


def test_help_shows_the_run_form_with_its_options_and_every_command():
    result = runner.invoke(app, ["sweep", "--help"])
    assert result.exit_code == 0, result.output
    unboxed = " ".join(word for word in result.output.split() if word != "│")
    assert "sweep [OPTIONS] {recipe} [overrides]... | COMMAND DIR" in unboxed, unboxed
    assert all(option in unboxed for option in ("--local", "--slurm", "--sweep-dir", "--then")), unboxed
    listed = re.findall(r"^│ (\w+) ", result.output[result.output.index("Commands"):], re.MULTILINE)
    assert tuple(listed) == COMMANDS


@pytest.mark.parametrize("args", [
    ["no-such.yaml"],
    ["run", "no-such.yaml"],
    ["--local", "no-such.yaml"],
    ["no-such.yaml", "train.steps=3", "--slurm", "--sweep-dir", "elsewhere"],
    ["statu"],  # names no command: a recipe, as before
])
def test_a_first_argument_that_names_no_command_is_the_recipe_to_run(args):
    result = runner.invoke(app, ["sweep", *args])
    assert result.exit_code == 1
    assert result.output == f"error: recipe file not found: {'statu' if args == ['statu'] else 'no-such.yaml'}\n"


def test_run_refuses_local_and_slurm_together_in_either_form():
    for args in (["no-such.yaml", "--local", "--slurm"], ["run", "--slurm", "no-such.yaml", "--local"]):
        result = runner.invoke(app, ["sweep", *args])
        assert (result.exit_code, result.output) == (1, "error: --local and --slurm: choose one\n")


@pytest.mark.parametrize("command, code, first, last", [
    ("status", 0, "sweep ", "best: trial 0, val_loss 2.5000; its recipe: {sweep}/best.yaml"),
    ("report", 0, "sweep ", "wrote {sweep}/report.html"),
    ("gate", 1, "gate of the best trial 0 ({sweep}/trials/000)", "error: no checkpoints in {sweep}/trials/000/checkpoints"),
    ("release", 1, "release of the best trial 0 ({sweep}/trials/000)", "error: no checkpoints in {sweep}/trials/000/checkpoints"),
])
def test_each_command_reaches_its_own_action(sweep, command, code, first, last):
    result = runner.invoke(app, ["sweep", command, str(sweep.path)])
    lines = result.output.splitlines()
    assert result.exit_code == code and "Traceback" not in result.output, result.output
    assert lines[0].startswith(first.format(sweep=sweep.path)) and lines[-1].startswith(last.format(sweep=sweep.path)), lines


@pytest.mark.parametrize("command", COMMANDS[1:])
def test_a_command_on_a_directory_that_is_no_sweep_is_one_line(command, tmp_path):
    result = runner.invoke(app, ["sweep", command, str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.output == f"error: {tmp_path / 'none'} is not a sweep directory (no study.journal): give the directory `orch sweep` printed\n"
