"""Pretrained directories naming code of their own (`auto_map`): refused at `orch validate` with one
line, and never run nor asked about ("Do you wish to run the custom code?") when loaded anyway."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data.spec import DataSpec
from tests.helpers.project import TINY

CUSTOM_CODE = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('custom code ran')\nclass Custom: pass\n"


def code_directory(tmp: Path, carrier: str) -> Path:
    """A directory whose `carrier` (config.json or tokenizer_config.json) maps its classes to custom.py,
    which leaves a file named RAN when imported; no class of transformers' own could load it instead."""
    directory = tmp / f"code-in-{carrier}"
    directory.mkdir()
    (directory / "custom.py").write_text(CUSTOM_CODE)
    configs = {
        "config.json": {"model_type": "custom-lm", "architectures": ["CustomForCausalLM"],
                        "auto_map": {"AutoConfig": "custom.Custom", "AutoModelForCausalLM": "custom.Custom"}},
        "tokenizer_config.json": {"tokenizer_class": "CustomTokenizer",
                                  "auto_map": {"AutoTokenizer": ["custom.Custom", None]}},
    }
    (directory / carrier).write_text(json.dumps(configs[carrier]))
    return directory


@pytest.mark.parametrize("field, carrier", [
    ("data.tokenizer.path", "tokenizer_config.json"),
    ("model.path", "config.json"),
    ("model.path", "tokenizer_config.json"),
    ("gates.quality.baseline", "config.json"),
    ("gates.evaluation.baseline", "tokenizer_config.json"),
])
def test_validate_refuses_a_pretrained_directory_with_code_of_its_own(tmp_path, field, carrier):
    directory = code_directory(tmp_path, carrier)
    tokenizer = ["data.tokenizer.kind=pretrained"] if field == "data.tokenizer.path" else []
    result = CliRunner().invoke(app, ["validate", str(TINY), *tokenizer, f"{field}={directory}"])
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{field}: {directory / carrier} names code of its own (auto_map)" in result.output
    assert not (directory / "RAN").exists()


def test_a_config_that_is_not_json_is_one_line(tmp_path):
    directory = tmp_path / "broken"
    directory.mkdir()
    (directory / "tokenizer_config.json").write_text("{not json")
    result = CliRunner().invoke(app, ["validate", str(TINY), "data.tokenizer.kind=pretrained",
                                      f"data.tokenizer.path={directory}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "tokenizer_config.json is not readable JSON" in result.output, result.output


@pytest.fixture
def questions(monkeypatch) -> list:
    """What transformers asked on the terminal before running a directory's code (it turns any error
    from the question into its own ValueError, so each is recorded, then answered with an error)."""
    asked = []

    def ask(prompt=""):
        asked.append(prompt)
        raise EOFError

    monkeypatch.setattr(builtins, "input", ask)
    return asked


def test_preparation_loading_such_a_tokenizer_raises_without_asking(tmp_path, questions):
    from orchestrator.data.prepare import _tokenizer

    directory = code_directory(tmp_path, "tokenizer_config.json")
    spec = DataSpec.model_validate({"builtin": "python-stdlib", "tokenizer": {"kind": "pretrained", "path": str(directory)}})
    with pytest.raises(ValueError, match="contains custom code"):
        _tokenizer(spec, None, tmp_path / "out")
    assert not questions and not (directory / "RAN").exists()


def test_building_such_a_model_raises_without_asking(tmp_path, questions):
    from orchestrator.shared.model.build import import_model_code
    from orchestrator.model.spec import ModelSpec

    directory = code_directory(tmp_path, "config.json")
    with pytest.raises(ValueError, match="contains custom code"):
        import_model_code(ModelSpec(path=directory), ModelSpec(arch="llama").sizes(256))
    assert not questions and not (directory / "RAN").exists()
