"""`ORCH_INJECT_FAULTS`: what a value names, and that a fault fires once per run unless `always`."""

from __future__ import annotations

import math

import pytest

from launch.faults import Faults
from orchestrator.shared.faults import Fault, parse


def test_kinds_steps_and_options():
    assert parse("nan@5, spike@6,raise@7:rank1,stop@12:save:rank0:rank2,exit@3:always") == [
        Fault("nan", 5),
        Fault("spike", 6),
        Fault("raise", 7, ranks=frozenset({1})),
        Fault("stop", 12, point="save", ranks=frozenset({0, 2})),
        Fault("exit", 3, always=True),
    ]
    assert parse("") == []


@pytest.mark.parametrize("text, says", [
    ("nan", "is not KIND@STEP"),
    ("boom@3", "is not KIND@STEP"),
    ("nan@x", "is not KIND@STEP"),
    ("raise@3:rank", "unknown option 'rank'"),
    ("raise@3:twice", "unknown option 'twice'"),
    ("nan@3:save", "a save has no loss"),
    ("spike@3:save", "a save has no loss"),
])
def test_a_bad_value_says_which_part(text, says):
    with pytest.raises(ValueError, match=says):
        parse(text)


def test_a_fault_fires_once_per_run_on_its_ranks(tmp_path):
    env = {"ORCH_INJECT_FAULTS": "spike@2:rank1,spike@4:always"}
    rank0, rank1 = (Faults.from_env(rank, tmp_path, env) for rank in (0, 1))
    assert [rank0.fire(step) for step in (1, 2, 3, 4)] == [None, None, None, 100.0]
    assert [rank1.fire(step) for step in (1, 2, 3, 4)] == [None, 100.0, None, 100.0]
    again = Faults.from_env(1, tmp_path, env)  # a restarted attempt: the marker survives it
    assert again.fire(2) is None and again.fire(4) == 100.0
    assert rank1.fire(2, "save") is None


def test_nan_makes_the_loss_nan_whatever_else_fires(tmp_path):
    faults = Faults.from_env(0, tmp_path, {"ORCH_INJECT_FAULTS": "spike@3,nan@3"})
    assert math.isnan(faults.fire(3))


def test_raise_fires_in_its_point_only(tmp_path):
    faults = Faults.from_env(0, tmp_path, {"ORCH_INJECT_FAULTS": "raise@3:save"})
    assert faults.fire(3) is None
    with pytest.raises(RuntimeError, match="injected fault"):
        faults.fire(3, "save")
    assert faults.fire(3, "save") is None


def test_nothing_without_the_variable(tmp_path):
    faults = Faults.from_env(0, tmp_path, {})
    assert not faults.mine and faults.fire(1) is None
    assert not tmp_path.joinpath("faults").exists()


@pytest.mark.parametrize("command", [["run"], ["submit", "recipes/tiny-pretrain.yaml"]])
def test_a_malformed_value_is_refused_before_anything_starts(command, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    monkeypatch.setenv("ORCH_INJECT_FAULTS", "nan@6,boom@3")
    result = CliRunner().invoke(app, [*command, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.strip() == "error: ORCH_INJECT_FAULTS: 'boom@3' is not KIND@STEP[:OPTION]... with KIND one of nan, spike, raise, exit, stop, slow"
    assert not (tmp_path / "run").exists()
