"""The code a recipe may name: a content classifier (`gates.content.classifier: module:function`)
and dashboard sinks (`tracking.custom: [module:Class]`).

A recipe is data and a run directory's copy of it can be edited by anyone, so a reference must not
reach whatever it names: `os:system` as a classifier would run each generated completion as a shell
command. Only what was written to be a hook is accepted, shown by the marker its author put on it:

    from orchestrator.hooks import content_classifier, tracking_sink

    @content_classifier
    def flag(text: str) -> list: ...

    @tracking_sink
    class MySink: ...          # open/log/artifact/close, as orchestrator.shared.tracking.sinks.Sink

Importing a module runs it, so the marker is looked for before anything is imported: the module is
found without importing it or its packages, and its source must define the name at top level under
the marker decorator. Modules that are programs (`__main__`, `this`) or not Python source (builtins,
extensions) are refused unrun. Only then is the module imported (its author's code: a module named in
a recipe is trusted code) and the marker checked on the object itself, at `orch validate` and again
before each use.
"""

from __future__ import annotations

import ast
import importlib
import os
import stat
import sys
import tokenize
from importlib.machinery import ModuleSpec
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
        raise TypeError(f"@tracking_sink marks a class with {', '.join(SINK_METHODS)} (orchestrator.shared.tracking.sinks.Sink)")
    setattr(cls, SINK_MARK, True)
    return cls


def _find_spec(module: str) -> ModuleSpec | None:
    """The module's spec as `import` would find it, without importing it or its parent packages
    (`importlib.util.find_spec` imports the parents, running their code)."""
    spec, path = None, None
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        if loaded is not None:
            spec = getattr(loaded, "__spec__", None)
        else:
            finders = (getattr(finder, "find_spec", None) for finder in sys.meta_path)
            spec = next((found for find in finders if find and (found := find(name, path)) is not None), None)
        if spec is None or (depth < len(parts) and spec.submodule_search_locations is None):
            return None
        path = spec.submodule_search_locations
    return spec


def _marked_in_source(reference: str, decorator: str) -> bool:
    """Whether the module's source defines the name at top level under `@decorator`: read, not run.
    Raises HookRefused for a module that cannot be found or read."""
    module, _, name = reference.partition(":")
    if not name.isidentifier() or not all(part.isidentifier() for part in module.split(".")):
        raise HookRefused(f"`{reference}` is not a reference to a hook: write it as module:name (dotted module, one name)")
    if "__main__" in module.split("."):
        return False  # a program's entry point, run by importing it
    try:
        spec = _find_spec(module)
    except Exception as exc:  # a meta-path finder's own failure
        raise HookRefused(f"cannot look for `{reference}` ({type(exc).__name__}: {exc})") from None
    if spec is None:
        raise HookRefused(f"cannot find module `{module}` for `{reference}`: is its module on the path where orch runs?")
    origin = spec.origin or ""
    try:
        regular = origin.endswith(".py") and stat.S_ISREG(os.stat(origin).st_mode)
    except OSError:
        regular = False
    if not regular:
        return False  # builtins, extensions, frozen and namespace modules hold no source to read the marker in
    try:
        with tokenize.open(origin) as source:
            tree = ast.parse(source.read(), origin)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise HookRefused(f"cannot read `{reference}` from {origin} ({type(exc).__name__}: {exc})") from None
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return any(
        isinstance(node, definitions) and node.name == name and any(_names(mark, decorator) for mark in node.decorator_list)
        for node in tree.body
    )


def _names(expression: ast.expr, decorator: str) -> bool:
    """`@decorator` or `@some.module.decorator`."""
    return (isinstance(expression, ast.Name) and expression.id == decorator) or (isinstance(expression, ast.Attribute) and expression.attr == decorator)


def _resolve(reference: str, mark: str, decorator: str) -> Callable:
    refused = f"`{reference}` is not marked @{decorator} (orchestrator.hooks): only code written as a hook may be named"
    if not _marked_in_source(reference, decorator):
        raise HookRefused(refused)
    module, _, name = reference.partition(":")
    try:
        target = getattr(importlib.import_module(module), name)
    except (Exception, SystemExit) as exc:  # the module is its author's code: whatever it raises (exit too) is one readable line
        raise HookRefused(f"cannot import `{reference}` ({type(exc).__name__}: {exc}): is its module on the path where orch runs?") from None
    # Its own marker only: the source's decorator may not be ours, and a function or class without
    # the marker (a subclass of a marked sink) is refused.
    if getattr(target, "__dict__", {}).get(mark) is not True:
        raise HookRefused(refused)
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
