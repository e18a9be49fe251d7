"""Harness task directories hold code: what their task configs may run, decided before the harness reads them.

lm-eval's task configs are YAML, but two of their features run code. `!function module.fn` imports
a Python file beside the config (or any importable module) and calls the function; templates
(`doc_to_text: "{{ ... }}"`, `doc_to_choice`, `doc_to_target`, ...) are Jinja, and the harness's
Jinja environment is not sandboxed: `{{ cycler.__init__.__globals__.os.system('...') }}` runs a
shell command. A directory's code is trusted, as a recipe's hooks are, only when the recipe
declares it (`gates.evaluation.trust_task_code: true`). Otherwise a config that names a function,
itself or through a file it includes, is refused at `orch validate` and again before each gate,
and every template renders in Jinja's sandbox (no attribute starting with `_`, no unsafe methods),
which plain field references and expressions (`{{question}}`, `{{choices[answer]}}`) never need.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import yaml

from orchestrator.errors import GateError
from orchestrator.gates.spec import EvaluationGate

TRUST = "gates.evaluation.trust_task_code"


class _FunctionFinder(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when there is one, as the harness's
    """A safe loader that records each reference to code (`!function module.fn`; `!!python/name:...` too, which
    the harness's loader accepts where PyYAML has no libyaml) instead of importing it."""

    functions: list[str]


def _record_function(loader: _FunctionFinder, node: yaml.Node) -> str:
    reference = f"!function {loader.construct_scalar(node)}"  # type: ignore[arg-type]
    loader.functions.append(reference)
    return reference


def _record_python(loader: _FunctionFinder, suffix: str, node: yaml.Node) -> None:
    loader.functions.append(f"!!python/{suffix}")


_FunctionFinder.add_constructor("!function", _record_function)
_FunctionFinder.add_multi_constructor("tag:yaml.org,2002:python/", _record_python)
_FunctionFinder.add_multi_constructor("!", lambda loader, tag, node: None)  # the harness refuses other tags itself


def task_code_problems(spec: EvaluationGate) -> list[tuple[str, str]]:
    """(field, why) for each task directory whose configs would run code the recipe did not declare trusted."""
    if spec.trust_task_code:
        return []
    problems = []
    for i, directory in enumerate(spec.task_dirs):
        if not directory.is_dir():
            continue  # the planner names a missing directory
        for config in sorted(directory.glob("**/*.yaml")):  # what the harness indexes
            found = _functions(config, set())
            if found:
                where, reference = found
                problems.append((f"gates.evaluation.task_dirs.{i}",
                                 f"{where} runs code (`{reference}`): set {TRUST}: true if you trust this directory's code"))
                break
    return problems


def _functions(config: Path, seen: set[Path]) -> tuple[Path, str] | None:
    """The first reference to code in `config` or in a config it includes (as the harness resolves `include`)."""
    config = config.resolve()
    if config in seen or not config.is_file():
        return None  # a cycle, or a missing include: the harness says so when it loads the task
    seen.add(config)
    loader = _FunctionFinder(config.read_bytes())
    loader.functions = []
    try:
        data = loader.get_single_data()
    except (yaml.YAMLError, RecursionError):
        return None  # not YAML: the harness skips it, and the gate names it when a task is missing
    finally:
        loader.dispose()
    if loader.functions:
        return config, loader.functions[0]
    includes = data.get("include") if isinstance(data, dict) else None
    for include in includes if isinstance(includes, list) else [includes] if includes else []:
        found = _functions(config.parent / str(include), seen)  # an absolute include replaces the parent
        if found:
            return found
    return None


@contextlib.contextmanager
def sandboxed_templates(spec: EvaluationGate) -> Iterator[None]:
    """The harness's templates rendered in Jinja's sandbox while inside, unless the task code is trusted.

    The harness renders every template through one module-level environment (`lm_eval.utils.env`,
    read at each `apply_template`); it is replaced by a sandboxed one with the same settings and
    filters for the duration, and put back after."""
    if spec.trust_task_code:
        yield
        return
    import lm_eval.utils
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import SandboxedEnvironment

    harness = lm_eval.utils.env
    sandbox = SandboxedEnvironment(loader=harness.loader, undefined=harness.undefined,
                                   keep_trailing_newline=harness.keep_trailing_newline)
    sandbox.filters.update(harness.filters)
    lm_eval.utils.env = sandbox
    try:
        yield
    except SecurityError as exc:
        raise GateError(f"gates.evaluation: a task template reaches past Jinja's sandbox ({exc}): "
                        f"set {TRUST}: true if you trust the task directories' code") from None
    finally:
        lm_eval.utils.env = harness
