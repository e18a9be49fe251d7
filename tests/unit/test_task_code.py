"""Harness task directories are code: `!function` and templates outside Jinja's sandbox run only when the
recipe declares the directories trusted (`gates.evaluation.trust_task_code`); otherwise they are refused at
`orch validate` and before the gate, and templates render sandboxed (the evaluation and contamination
gates both render them). Each hostile directory leaves a file named RAN wherever its code runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import GateError
from orchestrator.gates.downstream import downstream_gate, evaluation_texts
from orchestrator.gates.spec import EvaluationGate
from tests.helpers.project import ROOT, TINY

DATA = ROOT / "recipes" / "gates" / "tasks" / "python_completion.jsonl"
FUNCTION = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('imported')\n\ndef process_docs(docs):\n    return docs\n"


def task_yaml(name: str, **extra: str) -> str:
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {DATA}", "test_split: test",
             "output_type: generate_until", "doc_to_target: target", "metric_list:", "  - metric: exact_match"]
    return "\n".join(lines + [f"{key}: {value}" for key, value in extra.items()]) + "\n"


def function_dir(tmp: Path) -> Path:
    """A task whose `process_docs` is a function of a Python file beside it."""
    directory = tmp / "function-tasks"
    directory.mkdir()
    (directory / "utils.py").write_text(FUNCTION)
    (directory / "hostile.yaml").write_text(task_yaml("hostile", doc_to_text="context", process_docs="!function utils.process_docs"))
    return directory


def included_function_dir(tmp: Path) -> Path:
    """A task that looks like data, including a config elsewhere that names a function."""
    elsewhere = function_dir(tmp)
    (elsewhere / "hostile.yaml").rename(elsewhere / "base.yml")  # not indexed by the harness there: reached only through the include
    directory = tmp / "including-tasks"
    directory.mkdir()
    (directory / "innocent.yaml").write_text(f"include: {elsewhere / 'base.yml'}\ntask: innocent\n")
    return directory


def python_tag_dir(tmp: Path) -> Path:
    """A function named by PyYAML's own tag, which the harness's loader takes where PyYAML has no libyaml."""
    directory = tmp / "python-tag-tasks"
    directory.mkdir()
    (directory / "hostile.yaml").write_text(task_yaml("hostile", doc_to_text="context", process_docs="!!python/name:os.system"))
    return directory


def template_dir(tmp: Path) -> Path:
    """A task whose prompt template reaches `os` through a Jinja global's function."""
    directory = tmp / "template-tasks"
    directory.mkdir()
    payload = "{{ cycler.__init__.__globals__.os.makedirs('" + str(directory / "RAN") + "', exist_ok=True) }}{{ context }}"
    (directory / "hostile.yaml").write_text(task_yaml("hostile", doc_to_text=f'"{payload}"'))
    return directory


def evaluation(directory: Path, **fields) -> EvaluationGate:
    return EvaluationGate.model_validate({"tasks": [{"name": "hostile" if "innocent" not in str(directory) else "innocent",
                                                     "metric": "exact_match"}], "task_dirs": [str(directory)], "limit": 2, **fields})


def ran(tmp: Path) -> list[Path]:
    return sorted(tmp.rglob("RAN"))


@pytest.mark.parametrize("build, reference", [(function_dir, "!function utils.process_docs"),
                                              (included_function_dir, "!function utils.process_docs"),
                                              (python_tag_dir, "!!python/name:os.system")])
def test_validate_refuses_task_functions_not_declared_trusted(tmp_path, build, reference):
    directory = build(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(TINY), f"gates.evaluation.task_dirs=[{directory}]"])
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert "gates.evaluation.task_dirs.0:" in result.output and f"runs code (`{reference}`)" in result.output
    assert "trust_task_code: true" in result.output and not ran(tmp_path)


@pytest.mark.parametrize("build", [function_dir, included_function_dir])
def test_the_gate_refuses_them_again_before_the_harness_reads_them(tmp_path, build):
    """A run's recipe can be edited after validate: the evaluation and contamination gates check again."""
    spec = evaluation(build(tmp_path))
    with pytest.raises(GateError, match="runs code"):
        downstream_gate(spec, None, None, 0.05)
    with pytest.raises(GateError, match="runs code"):
        evaluation_texts(spec)
    assert not ran(tmp_path)


def test_templates_render_in_jinja_sandbox(tmp_path):
    spec = evaluation(template_dir(tmp_path))
    with pytest.raises(GateError) as info:
        evaluation_texts(spec)
    assert "\n" not in str(info.value) and "unsafe" in str(info.value), info.value
    assert not ran(tmp_path)


def test_plain_templates_and_filters_still_render_in_the_sandbox(tmp_path):
    directory = tmp_path / "plain"
    directory.mkdir()
    (directory / "hostile.yaml").write_text(task_yaml("hostile", doc_to_text="\"{{ context | regex_replace('def', 'DEF') }}\""))
    filtered = evaluation_texts(evaluation(directory))
    (directory / "hostile.yaml").write_text(task_yaml("hostile", doc_to_text='"{{ context }}"'))
    plain = evaluation_texts(evaluation(directory))
    assert len(filtered) == len(plain) and any("DEF" in text for text in filtered) and filtered != plain


def test_declared_trusted_the_code_runs(tmp_path):
    function = function_dir(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(TINY), f"gates.evaluation.task_dirs=[{function}]",
                                      "gates.evaluation.trust_task_code=true"])
    assert result.exit_code == 0, result.output
    assert evaluation_texts(evaluation(function, trust_task_code=True)) and ran(tmp_path) == [function / "RAN"]
    (tmp_path / "t").mkdir()
    template = template_dir(tmp_path / "t")
    evaluation_texts(evaluation(template, trust_task_code=True))
    assert (template / "RAN").is_dir()
