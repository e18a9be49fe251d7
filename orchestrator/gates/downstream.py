"""The evaluation gate: downstream tasks through EleutherAI's lm-evaluation-harness (`lm_eval`).

Tasks are the harness's own YAML task configs, found in local directories (`gates.evaluation.task_dirs`;
the project ships recipes/gates/tasks, written by its make_tasks.py). Only those directories are
searched, not the harness's built-in tasks, which would need the Hugging Face Hub: the harness
runs offline, seeded, with `datasets`' cache in a temporary directory and its logs and progress
bars silenced. A task's score is held to `min_score` and, with a baseline model, to the
baseline's score less `max_drop`; higher is better.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from orchestrator.errors import GateError
from orchestrator.gates.result import GateResult, skipped
from orchestrator.gates.spec import EvaluationGate, TaskThreshold
from orchestrator.gates.task_code import sandboxed_templates, task_code_problems
from orchestrator.model.remote_code import remote_code_problem

SEED = 1234
BOOTSTRAP_ITERS = 1000
"""Only for metrics whose standard error has no closed form; a mean's (acc, exact_match) is computed exactly."""


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str  # as the harness reports it: "acc,none" is acc after the default (no-op) filter
    score: float
    stderr: float | None
    examples: int


def downstream_gate(spec: EvaluationGate, model, tokenizer, warn_margin: float) -> GateResult:
    """Every task of `spec` on `model` (and on the baseline, when there is one), each score against its floors."""
    if not spec.tasks:
        return skipped("evaluation", "no tasks (gates.evaluation.tasks)")
    missing_baseline = [t.name for t in spec.tasks if t.max_drop is not None and spec.baseline is None]
    if missing_baseline:
        raise GateError(f"gates.evaluation: max_drop of {', '.join(missing_baseline)} needs a baseline (gates.evaluation.baseline)")
    scores = task_scores(spec, model, tokenizer)
    baseline = _baseline_scores(spec) if spec.baseline is not None else [None] * len(scores)
    rows = {_label(t, spec): _verdict(t, s, b, warn_margin) for t, s, b in zip(spec.tasks, scores, baseline)}
    statuses = [row["status"] for row in rows.values()]
    status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    # The value is the score of the task with the least margin above its floor (the lowest score when no task has one).
    floored = [label for label, row in rows.items() if row["floor"] is not None]
    closest = (min(floored, key=lambda label: rows[label]["score"] - rows[label]["floor"]) if floored
               else min(rows, key=lambda label: rows[label]["score"]))
    summary = "; ".join(_describe(label, row) for label, row in rows.items())
    summary += (f" (value: the score of {closest}, the least margin above its floor)" if floored
                else f" (value: the lowest score, {closest}'s)")
    evidence = {
        "scores": _dashboard_scores(spec, scores),
        "tasks": rows,
        "baseline": str(spec.baseline) if spec.baseline is not None else None,
        "limit": spec.limit,
        "num_fewshot": spec.num_fewshot,
        "harness": f"lm-eval {_harness_version()}",
    }
    return GateResult("evaluation", status, rows[closest]["score"], rows[closest]["floor"], summary, evidence)


def task_scores(spec: EvaluationGate, model, tokenizer) -> list[TaskScore]:
    """The harness's score of each task of `spec` (in order), in the task's metric, with its standard error."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM

    # The harness describes the machine into its results (`pip list`, git, torch's collect_env in
    # subprocesses: about a second per gate); the report records only the scores.
    undescribed = _patched(lm_eval.evaluator, add_env_info=lambda results: None, get_git_commit_hash=lambda: None)
    with _offline_harness(), sandboxed_templates(spec), undescribed:
        manager = _task_manager(spec)
        loaded = _load_tasks(manager, list(dict.fromkeys(t.name for t in spec.tasks)))
        # The harness gives a pad token to a tokenizer without one: a copy keeps the caller's as it was.
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=spec.batch_size)
        results = lm_eval.simple_evaluate(
            lm, tasks=[obj for objects in loaded.values() for obj in objects], num_fewshot=spec.num_fewshot, limit=spec.limit,
            bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False,
            task_manager=manager,  # without it, the harness indexes its thousands of built-in tasks first
            random_seed=SEED, numpy_random_seed=SEED, torch_random_seed=SEED, fewshot_random_seed=SEED,
        )
    return [_score(t, results) for t in spec.tasks]


def evaluation_texts(spec: EvaluationGate, task: str | None = None) -> list[str]:
    """Every example of the configured tasks (or of the one named), as `texts_by_task` gives them."""
    return [text for name, texts in texts_by_task(spec).items() if task is None or name == task for text in texts]


def texts_by_task(spec: EvaluationGate) -> dict[str, list[str]]:
    """Each configured task's examples, all of them whatever `limit`, one string each: the prompt as
    the harness renders it, then the answer and every choice, one a line. The contamination gate
    looks for these in the training data; the harness loads the tasks once for all of them."""
    names = list(dict.fromkeys(t.name for t in spec.tasks))  # a task may be listed once per metric
    if not names:
        return {}
    with _offline_harness(), sandboxed_templates(spec):
        loaded = _load_tasks(_task_manager(spec), names)
        return {name: ["\n".join([str(leaf.doc_to_text(doc)), *_answers(leaf, doc)])
                       for leaf in _leaf_tasks(objects) for doc in leaf.eval_docs]
                for name, objects in loaded.items()}


# -- running the harness ----------------------------------------------------------------------------


@contextlib.contextmanager
def _offline_harness():
    """No hub, `datasets`' cache in a temporary directory, the harness's logs and progress bars silenced."""
    import datasets
    import huggingface_hub.constants

    harness_log = logging.getLogger("lm_eval")
    level, bars = harness_log.level, datasets.is_progress_bar_enabled()
    with tempfile.TemporaryDirectory(prefix="orch-lm-eval-") as cache, contextlib.ExitStack() as stack:
        stack.enter_context(_patched(huggingface_hub.constants, HF_HUB_OFFLINE=True))
        stack.enter_context(_patched(datasets.config, HF_HUB_OFFLINE=True, HF_DATASETS_OFFLINE=True, HF_DATASETS_CACHE=Path(cache)))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))  # the harness's tqdm bars
        harness_log.setLevel(logging.ERROR)
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            harness_log.setLevel(level)
            if bars:
                datasets.enable_progress_bars()


@contextlib.contextmanager
def _patched(module, **values):
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _task_manager(spec: EvaluationGate):
    """The harness's index of the task directories' configs (and not of its built-in tasks, which need the hub),
    once their code is known to be declared (checked again here: a run's recipe may be edited after validate)."""
    from lm_eval.tasks import TaskManager

    for directory in spec.task_dirs:
        if not directory.is_dir():
            raise GateError(f"gates.evaluation.task_dirs: {directory} is not a directory")
    undeclared = task_code_problems(spec)
    if undeclared:
        raise GateError("; ".join(f"{field}: {why}" for field, why in undeclared))
    return TaskManager(include_path=[str(d) for d in spec.task_dirs], include_defaults=False)


def _load_tasks(manager, names: list[str]) -> dict[str, list]:
    """Each task name's harness objects (a task, or a group); one readable line when one cannot load."""
    loaded = {}
    for name in names:
        if name not in manager.all_tasks:
            raise GateError(_unknown_task(name, [Path(p) for p in manager.include_path], manager.all_tasks))
        try:
            found = manager.load([name])
        except Exception as exc:  # the harness's and `datasets`' errors for a broken config or missing data file
            raise GateError(f"gates.evaluation: task {name!r} ({_yaml_of(manager, name)}) cannot be loaded: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
        loaded[name] = [found["groups"][name]] if name in found["groups"] else list(found["tasks"].values())
    return loaded


def _unknown_task(name: str, dirs: list[Path], known: list[str]) -> str:
    if not dirs:
        return f"gates.evaluation.tasks: no harness task {name!r}: no task directories (gates.evaluation.task_dirs)"
    broken = "; ".join(f"{path}: {problem}" for path, problem in _unreadable_yaml(dirs))
    return (f"gates.evaluation.tasks: no harness task {name!r} in {', '.join(str(d) for d in dirs)}; "
            + (f"it has {', '.join(known)}" if known else "it has no tasks") + (f"; unreadable task configs: {broken}" if broken else ""))


def _unreadable_yaml(dirs: list[Path]) -> list[tuple[str, str]]:
    """Task configs the harness skips while indexing (it only logs them): not YAML, or not a mapping naming a task."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: None)  # the harness's `!function`
    problems = []
    for directory in dirs:
        for path in sorted(directory.rglob("*.yaml")):
            try:
                config = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (a SafeLoader)
            except yaml.MarkedYAMLError as exc:
                where = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
                problems.append((f"{path}{where}", ", ".join(filter(None, [exc.context, exc.problem]))))
                continue
            except (OSError, yaml.YAMLError) as exc:
                problems.append((str(path), _first_line(exc)))
                continue
            if not isinstance(config, dict) or not {"task", "group", "include"} & set(config):
                problems.append((str(path), "not a task config (a mapping with `task:`)"))
    return problems


def _yaml_of(manager, name: str) -> str:
    entry = manager.task_index.get(name)
    return str(entry.yaml_path) if entry is not None and entry.yaml_path else "no YAML"


def _leaf_tasks(objects: list) -> list:
    from lm_eval.api.group import Group

    return [task for obj in objects for task in (obj.get_all_tasks() if isinstance(obj, Group) else [obj])]


def _answers(task, doc) -> list[str]:
    """The answer and every choice of a document, as text."""
    target = task.doc_to_target(doc)
    choices = [str(c) for c in task.doc_to_choice(doc)] if task.config.doc_to_choice is not None else []
    if isinstance(target, int) and choices:
        return choices  # the answer is one of them
    return [str(t) for t in (target if isinstance(target, list) else [target])] + choices


def _score(threshold: TaskThreshold, results: dict) -> TaskScore:
    reported = results["results"].get(threshold.name)
    if reported is None:
        raise GateError(f"gates.evaluation: task {threshold.name!r} gave no results (the harness skipped it)")
    keys = [k for k in reported if "," in k and "_stderr" not in k]
    chosen = [k for k in keys if k == threshold.metric or k.split(",")[0] == threshold.metric]
    if len(chosen) != 1:
        offered = ", ".join(sorted(keys)) or "nothing"
        problem = "does not report" if not chosen else "reports more than one filter of"
        raise GateError(f"gates.evaluation: task {threshold.name!r} {problem} metric {threshold.metric!r} (it reports {offered})")
    key = chosen[0]
    metric, _, filtered = key.partition(",")
    stderr = reported.get(f"{metric}_stderr,{filtered}")
    samples = results.get("n-samples", {}).get(threshold.name, {})
    return TaskScore(threshold.name, key, float(reported[key]), float(stderr) if isinstance(stderr, (int, float)) else None,
                     int(samples.get("effective", 0)))


def _baseline_scores(spec: EvaluationGate) -> list[TaskScore]:
    """The same tasks on the baseline model, with its own tokenizer (scores, unlike losses, compare across tokenizers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (spec.baseline / "config.json").is_file():
        raise GateError(f"gates.evaluation.baseline: {spec.baseline} is not a model directory (no config.json): give a release or an export")
    if why := remote_code_problem(spec.baseline):
        raise GateError(f"gates.evaluation.baseline: {why}")
    with _offline_harness():
        model = AutoModelForCausalLM.from_pretrained(str(spec.baseline), trust_remote_code=False).float().eval()
        tokenizer = AutoTokenizer.from_pretrained(str(spec.baseline), trust_remote_code=False)
    return task_scores(spec, model, tokenizer)


# -- verdicts -----------------------------------------------------------------------------------------


def _label(threshold: TaskThreshold, spec: EvaluationGate) -> str:
    """The task's name, with its metric when the recipe holds the task to more than one."""
    return threshold.name if sum(t.name == threshold.name for t in spec.tasks) == 1 else f"{threshold.name} {threshold.metric}"


def _dashboard_scores(spec: EvaluationGate, scores: list[TaskScore]) -> dict:
    """{task: score}, or {task: {metric: score}} for a task held to several metrics."""
    out: dict = {}
    for threshold, score in zip(spec.tasks, scores):
        if _label(threshold, spec) == threshold.name:
            out[threshold.name] = score.score
        else:
            out.setdefault(threshold.name, {})[threshold.metric] = score.score
    return out


def _verdict(threshold: TaskThreshold, score: TaskScore, baseline: TaskScore | None, warn_margin: float) -> dict:
    """Higher is better: fail under a floor, warn within `warn_margin` of the limit that sets it."""
    checks = []  # (floor, the width of its warning band)
    if threshold.min_score is not None:
        checks.append((threshold.min_score, warn_margin * abs(threshold.min_score)))
    if threshold.max_drop is not None and baseline is not None:
        checks.append((baseline.score - threshold.max_drop, warn_margin * threshold.max_drop))
    statuses = ["pass" if math.isfinite(score.score) else "fail"]
    for floor, band in checks:
        statuses.append("fail" if score.score < floor else "warn" if score.score < floor + band else "pass")
    return {
        **asdict(score),
        "status": "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass",
        "min_score": threshold.min_score,
        "max_drop": threshold.max_drop,
        "baseline_score": baseline.score if baseline is not None else None,
        "floor": max((floor for floor, _ in checks), default=None),
    }


def _describe(label: str, row: dict) -> str:
    stderr = f" ± {row['stderr']:.3f}" if row["stderr"] is not None else ""
    limits = [f"min {row['min_score']:g}"] if row["min_score"] is not None else []
    if row["baseline_score"] is not None:
        drop = f", allowed drop {row['max_drop']:g}" if row["max_drop"] is not None else ""
        limits.append(f"baseline {row['baseline_score']:.3f}{drop}")
    shown = f" ({'; '.join(limits)})" if limits else ""
    verdict = f" {row['status'].upper()}" if row["status"] != "pass" else ""
    name = label if " " in label else f"{label} {row['metric'].split(',')[0]}"
    return f"{name} {row['score']:.3f}{stderr}{shown}{verdict}"


def _harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
