"""The code a recipe may name: a content classifier (`gates.content.classifier: module:function`)
and dashboard sinks (`tracking.custom: [module:Class]`).

A recipe is data and a run directory's copy of it can be edited by anyone, so a reference must not
reach whatever it names: `os:system` as a classifier would run each generated completion as a shell
command. Only what was written to be a hook is accepted, shown by the marker its author put on it:

    from orchestrator.hooks import content_classifier, tracking_sink

    @content_classifier
    def flag(text: str) -> list: ...

    @tracking_sink
    class MySink: ...          # open/log/artifact/close, as orchestrator.tracking.sinks.Sink

The named module is imported to look (importing it is running its author's code: a module named in
a recipe is trusted code), and the marker is checked at `orch validate` and again before each use.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

CLASSIFIER_MARK = "__orch_content_classifier__"
SINK_MARK = "__orch_tracking_sink__"
SINK_METHODS = ("open", "log", "artifact", "close")

Hook = TypeVar("Hook")


class HookRefused(ValueError):
    """A recipe names code that is not a hook of the kind its field takes."""


def content_classifier(function: Hook) -> Hook:
    """Marks `function(text) -> list of findings` as a classifier `gates.content.classifier` may name."""
    if isinstance(function, type) or not callable(function):
        raise TypeError("@content_classifier marks a function taking a text")
    setattr(function, CLASSIFIER_MARK, True)
    return function


def tracking_sink(cls: Hook) -> Hook:
    """Marks a class with open/log/artifact/close as a sink `tracking.custom` may name."""
    if not isinstance(cls, type) or any(not callable(getattr(cls, m, None)) for m in SINK_METHODS):
        raise TypeError(f"@tracking_sink marks a class with {', '.join(SINK_METHODS)} (orchestrator.tracking.sinks.Sink)")
    setattr(cls, SINK_MARK, True)
    return cls


def _resolve(reference: str, mark: str, decorator: str) -> Callable:
    module, _, name = reference.partition(":")
    try:
        target = getattr(importlib.import_module(module), name)
    except Exception as exc:  # the module is its author's code: whatever it raises is one readable line
        raise HookRefused(f"cannot import `{reference}` ({type(exc).__name__}: {exc}): is its module on the path where orch runs?") from None
    # Its own marker only: a function or class without one (os.system, subprocess.run, builtins.eval,
    # a subclass of a marked sink) is refused; builtins cannot carry attributes at all.
    if getattr(target, "__dict__", {}).get(mark) is not True:
        raise HookRefused(f"`{reference}` is not marked @{decorator} (orchestrator.hooks): only code written as a hook may be named")
    return target


def load_classifier(reference: str) -> Callable[[str], list]:
    return _resolve(reference, CLASSIFIER_MARK, "content_classifier")


def load_sink_class(reference: str) -> type:
    return _resolve(reference, SINK_MARK, "tracking_sink")


def hook_problems(classifier: str | None, sinks: list[str]) -> list[tuple[str, str]]:
    """(recipe field, why) for each named hook that would be refused when used."""
    named = [("gates.content.classifier", classifier, load_classifier)] if classifier else []
    named += [(f"tracking.custom.{i}", reference, load_sink_class) for i, reference in enumerate(sinks)]
    problems = []
    for field, reference, load in named:
        try:
            load(reference)
        except HookRefused as exc:
            problems.append((field, str(exc)))
    return problems
