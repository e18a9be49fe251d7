"""Code a recipe names must be written as a hook: `os:system` as a classifier, `subprocess:Popen` as
a sink, or any unmarked function is refused at `orch validate` (and again before use), naming the field,
and without importing the module: importing runs it."""

from __future__ import annotations

import os
import sys

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import GateError
from orchestrator.gates.content import content_gate
from orchestrator.gates.spec import ContentGate
from orchestrator.shared.tracking.sinks import UnloadableSink, make_sinks
from orchestrator.tracking.spec import TrackingSpec
from tests.helpers.project import TINY

HOOKS = '''
from orchestrator.hooks import content_classifier, tracking_sink


@content_classifier
def marked(text):
    return ["shouting"] if text.isupper() else []


def unmarked(text):
    return []


@tracking_sink
class MarkedSink:
    name = "marked"

    def open(self, identity):
        return {}

    def log(self, metrics, step): ...
    def artifact(self, path, name): ...
    def close(self): ...


class UnmarkedSink(MarkedSink):
    name = "unmarked"
'''


@pytest.fixture
def user_hooks(tmp_path, monkeypatch, request) -> str:
    """A user's module of hooks, importable under a name of its own."""
    name = f"user_hooks_{request.node.name.split('[')[-1].strip(']').replace('-', '_').replace(':', '_').replace('.', '_')}"
    (tmp_path / f"{name}.py").write_text(HOOKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def validate(*overrides: str):
    return CliRunner().invoke(app, ["validate", str(TINY), *overrides])


@pytest.fixture
def no_shell(monkeypatch):
    """Fails the test if anything reaches os.system."""
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command) or 0)
    yield
    assert calls == []


@pytest.mark.parametrize("reference", ["os:system", "subprocess:run", "builtins:eval"])
def test_a_classifier_that_is_not_a_marked_hook_is_refused_at_validate(reference, no_shell):
    result = validate(f"gates.content.classifier={reference}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [row for row in result.output.splitlines() if row.startswith("error:")]
    assert "gates.content.classifier" in line and f"`{reference}` is not marked @content_classifier" in line
    with pytest.raises(GateError, match="not marked @content_classifier"):
        content_gate(ContentGate(classifier=reference), [{"source": "p", "completion": "echo ran"}])


def test_an_unmarked_function_is_refused_and_a_marked_one_is_used(user_hooks):
    result = validate(f"gates.content.classifier={user_hooks}:unmarked")
    assert result.exit_code == 1 and f"`{user_hooks}:unmarked` is not marked @content_classifier" in result.output
    assert validate(f"gates.content.classifier={user_hooks}:marked").exit_code == 0
    gated = content_gate(ContentGate(classifier=f"{user_hooks}:marked"), [{"source": "p", "completion": "LOUD"}])
    assert gated.status == "fail" and gated.evidence["findings"][0]["kind"] == "classifier"


MARKED_THEN = "from orchestrator.hooks import content_classifier\n\n@content_classifier\ndef flag(text):\n    return []\n\n"


@pytest.mark.parametrize(("raises", "says"), [("raise RuntimeError('half written')", "RuntimeError: half written"), ("raise SystemExit(3)", "SystemExit: 3")])
def test_a_marked_classifier_whose_module_fails_to_import_is_one_line(raises, says, tmp_path, monkeypatch):
    (tmp_path / "broken_hooks.py").write_text(MARKED_THEN + raises + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_hooks", raising=False)
    result = validate("gates.content.classifier=broken_hooks:flag")
    assert result.exit_code == 1 and f"cannot import `broken_hooks:flag` ({says})" in result.output


@pytest.fixture
def fresh_modules(monkeypatch):
    """Forgets the named modules for the test, so that importing them would run them again."""
    return lambda *names: [monkeypatch.delitem(sys.modules, name, raising=False) for name in names]


def test_a_module_that_runs_on_import_is_refused_unrun(fresh_modules, capsys):
    """`this` prints the Zen of Python when imported; naming it must not import it."""
    fresh_modules("this")
    result = validate("gates.content.classifier=this:x")
    assert result.exit_code == 1 and "`this:x` is not marked @content_classifier" in result.output
    assert "Beautiful is better" not in result.output + capsys.readouterr().out and "this" not in sys.modules


def test_a_programs_main_module_is_refused_unrun(fresh_modules, tmp_path, monkeypatch):
    """`venv.__main__` creates the virtual environment its command line names when imported."""
    fresh_modules("venv.__main__")
    made = tmp_path / "made"
    monkeypatch.setattr(sys, "argv", ["venv", "--without-pip", str(made)])
    result = validate("tracking.custom=[venv.__main__:X]")
    assert result.exit_code == 1 and "`venv.__main__:X` is not marked @tracking_sink" in result.output
    assert not made.exists() and "venv.__main__" not in sys.modules


def test_neither_an_unmarked_module_nor_its_package_runs(tmp_path, monkeypatch, fresh_modules):
    """The marker is read from the source: a package whose `__init__` or hook module does something
    on import is not imported unless the name is a marked definition."""
    package = tmp_path / "side_effect_pkg"
    package.mkdir()
    ran = tmp_path / "ran"
    (package / "__init__.py").write_text(f"open({str(ran / 'package')!r}, 'w').close()\n")
    (package / "hooks.py").write_text(MARKED_THEN.replace("flag", "other") + f"open({str(ran / 'module')!r}, 'w').close()\ndef flag(text):\n    return []\n")
    ran.mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh_modules("side_effect_pkg", "side_effect_pkg.hooks")
    result = validate("gates.content.classifier=side_effect_pkg.hooks:flag")
    assert result.exit_code == 1 and "`side_effect_pkg.hooks:flag` is not marked @content_classifier" in result.output
    assert list(ran.iterdir()) == [] and "side_effect_pkg" not in sys.modules
    assert validate("gates.content.classifier=side_effect_pkg.hooks:other").exit_code == 0  # the marked one loads


def test_a_hook_marked_through_its_module_loads_and_a_lookalike_marker_does_not(tmp_path, monkeypatch, fresh_modules):
    (tmp_path / "dotted_hooks.py").write_text(
        "from orchestrator import hooks\n\n@hooks.content_classifier\ndef flag(text):\n    return []\n\n"
        "def content_classifier(function):\n    return function\n\n@content_classifier\ndef fake(text):\n    return []\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh_modules("dotted_hooks")
    assert validate("gates.content.classifier=dotted_hooks:flag").exit_code == 0
    result = validate("gates.content.classifier=dotted_hooks:fake")
    assert result.exit_code == 1 and "`dotted_hooks:fake` is not marked @content_classifier" in result.output


@pytest.mark.parametrize("reference", ["no_such_hooks_module:flag", "os.path.nowhere:flag", "flag", "os:a.b"])
def test_a_reference_that_names_nothing_is_one_line(reference):
    result = validate(f"gates.content.classifier={reference}")
    (line,) = [row for row in result.output.splitlines() if row.startswith("error:")]
    assert result.exit_code == 1 and "Traceback" not in result.output and "gates.content.classifier" in line


@pytest.mark.parametrize("reference", ["subprocess:Popen", "unmarked"])
def test_a_sink_that_is_not_a_marked_class_is_refused(reference, user_hooks):
    reference = f"{user_hooks}:UnmarkedSink" if reference == "unmarked" else reference
    result = validate(f"tracking.custom=[{user_hooks}:MarkedSink,{reference}]")
    (line,) = [row for row in result.output.splitlines() if row.startswith("error:")]
    assert result.exit_code == 1 and "tracking.custom.1" in line and "not marked @tracking_sink" in line
    marked, refused = make_sinks(TrackingSpec(custom=[f"{user_hooks}:MarkedSink", reference]))
    assert marked.name == "marked" and isinstance(refused, UnloadableSink)
    assert validate(f"tracking.custom=[{user_hooks}:MarkedSink]").exit_code == 0


def test_the_markers_refuse_what_cannot_be_a_hook():
    from orchestrator.hooks import content_classifier, tracking_sink

    with pytest.raises(TypeError):
        tracking_sink(type("NoMethods", (), {}))
    with pytest.raises(TypeError):
        content_classifier(type("AClass", (), {}))
