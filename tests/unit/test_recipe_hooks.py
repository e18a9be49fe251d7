"""Code a recipe names must be written as a hook: `os:system` as a classifier, `subprocess:Popen` as
a sink, or any unmarked function is refused at `orch validate` (and again before use), naming the field."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import GateError
from orchestrator.gates.content import content_gate
from orchestrator.gates.spec import ContentGate
from orchestrator.tracking.sinks import UnloadableSink, make_sinks
from orchestrator.tracking.spec import TrackingSpec
from tests.conftest import TINY

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


def test_a_classifier_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "broken_hooks.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = validate("gates.content.classifier=broken_hooks:flag")
    assert result.exit_code == 1 and "cannot import `broken_hooks:flag` (RuntimeError: half written)" in result.output


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
