"""The evaluation gate through the real lm-evaluation-harness, on the shipped tasks and a tiny saved Llama.

The scores of a random tiny model are near chance; the tests check the harness really ran (scores
in the tasks' metrics, every example counted), that verdicts follow the scores, and that a task the
harness cannot load is one readable line.
"""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import GateError
from orchestrator.gates.downstream import downstream_gate, evaluation_texts, task_scores
from orchestrator.gates.spec import EvaluationGate
from tests.helpers.project import ROOT

TASKS = ROOT / "recipes" / "gates" / "tasks"
SHIPPED = {"python_idioms": "acc", "python_syntax": "acc", "python_completion": "exact_match"}


def spec(*tasks: dict, **fields) -> EvaluationGate:
    return EvaluationGate.model_validate({"tasks": list(tasks), "task_dirs": [str(TASKS)], **fields})


def lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared with other work: one thread is several times faster here, and repeatable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def project_root(monkeypatch):
    """The shipped tasks name their data relative to the project root, where recipes are run."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(tiny_base)).float().eval(), AutoTokenizer.from_pretrained(str(tiny_base))


@pytest.fixture(scope="module")
def shipped(model_and_tokenizer):
    """Every shipped task, without thresholds, run from the project root (as `orch gate` is)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        return downstream_gate(spec(*({"name": n, "metric": m} for n, m in SHIPPED.items())), *model_and_tokenizer, 0.05)


@pytest.fixture(scope="module")
def other_model(tiny_base, tmp_path_factory):
    """A second tiny model with the same tokenizer, differently initialised, saved as a baseline would be."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("other")
    torch.manual_seed(2)  # it scores 0.375 on python_idioms, tiny_base 0.35
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tiny_base))).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_base)).save_pretrained(str(out))
    return out


def test_the_shipped_tasks_score_every_example_in_their_metric(shipped, model_and_tokenizer):
    assert shipped.name == "evaluation" and shipped.status == "pass"
    tasks = shipped.evidence["tasks"]
    for name, metric in SHIPPED.items():
        row = tasks[name]
        assert row["metric"] == f"{metric},none" and row["examples"] == len(lines(name))
        assert 0 <= row["score"] <= 1 and row["stderr"] is not None and row["stderr"] >= 0
        assert shipped.evidence["scores"][name] == row["score"] and name in shipped.summary
    assert shipped.value == min(shipped.evidence["scores"].values()) and shipped.threshold is None
    assert model_and_tokenizer[1].pad_token is None  # the harness set a pad token on a copy, not on the caller's


def test_a_random_model_scores_about_chance(shipped):
    """Chance is 1/3 on the multiple-choice tasks (each choice right equally often), about 0 on exact match."""
    scores = shipped.evidence["scores"]
    assert 0.15 < scores["python_idioms"] < 0.55 and 0.15 < scores["python_syntax"] < 0.55
    assert scores["python_completion"] < 0.05


def test_a_score_under_its_floor_fails_one_just_over_it_warns(shipped, model_and_tokenizer):
    scores = shipped.evidence["scores"]
    idioms, syntax = scores["python_idioms"], scores["python_syntax"]
    result = downstream_gate(spec({"name": "python_idioms", "min_score": idioms - 0.1},
                                  {"name": "python_syntax", "min_score": syntax + 0.01}), *model_and_tokenizer, 0.05)
    assert result.status == "fail" and result.value == syntax and result.threshold == syntax + 0.01
    assert result.evidence["tasks"]["python_idioms"]["status"] == "pass"
    assert result.evidence["tasks"]["python_syntax"]["status"] == "fail" and "python_syntax acc" in result.summary
    warned = downstream_gate(spec({"name": "python_syntax", "min_score": syntax / 1.02}), *model_and_tokenizer, 0.05)
    assert warned.status == "warn" and warned.value == syntax


def test_the_same_model_as_baseline_passes_with_no_drop_allowed(model_and_tokenizer, tiny_base):
    result = downstream_gate(spec({"name": "python_idioms", "max_drop": 0}, baseline=str(tiny_base), limit=60), *model_and_tokenizer, 0.05)
    row = result.evidence["tasks"]["python_idioms"]
    assert result.status == "pass" and row["baseline_score"] == row["score"] and result.evidence["baseline"] == str(tiny_base)


def test_falling_further_below_the_baseline_than_allowed_fails(shipped, model_and_tokenizer, other_model, tiny_base):
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(str(other_model)).eval()
    mine = shipped.evidence["scores"]["python_idioms"]
    (theirs,) = (s.score for s in task_scores(spec({"name": "python_idioms"}), other, model_and_tokenizer[1]))
    assert mine != theirs, "the two models must score differently for this test to mean anything"
    worse, worse_model, better_dir = (mine, model_and_tokenizer[0], other_model) if mine < theirs else (theirs, other, tiny_base)
    drop = abs(mine - theirs)
    failed = downstream_gate(spec({"name": "python_idioms", "max_drop": drop / 2}, baseline=str(better_dir)),
                             worse_model, model_and_tokenizer[1], 0.05)
    assert failed.status == "fail" and failed.value == pytest.approx(worse)
    assert failed.threshold == pytest.approx(worse + drop / 2)  # the floor: the baseline's score less max_drop
    assert failed.evidence["tasks"]["python_idioms"]["baseline_score"] == pytest.approx(worse + drop)


def test_a_task_held_to_two_metrics_reports_both(model_and_tokenizer):
    result = downstream_gate(spec({"name": "python_idioms", "metric": "acc", "min_score": 0.0},
                                  {"name": "python_idioms", "metric": "acc_norm", "min_score": 1.0}, limit=30), *model_and_tokenizer, 0.05)
    scores = result.evidence["scores"]["python_idioms"]
    assert set(scores) == {"acc", "acc_norm"} and all(0 <= v <= 1 for v in scores.values())
    assert result.evidence["tasks"]["python_idioms acc"]["status"] == "pass"
    assert result.evidence["tasks"]["python_idioms acc_norm"]["status"] == "fail" and result.status == "fail"
    assert result.evidence["tasks"]["python_idioms acc"]["examples"] == 30


@pytest.mark.parametrize("case", ["unknown task", "broken yaml", "missing data file", "missing task dir", "missing metric"])
def test_a_task_the_harness_cannot_use_is_one_readable_line(case, tmp_path, model_and_tokenizer):
    task, dirs = {"name": "python_idioms"}, [str(TASKS)]
    if case == "unknown task":
        task, expected = {"name": "python_idiomz"}, ["no harness task 'python_idiomz'", "python_idioms"]
    elif case == "broken yaml":
        (tmp_path / "broken.yaml").write_text("task: broken\noutput_type: [multiple_choice\n")
        task, dirs, expected = {"name": "broken"}, [str(tmp_path)], ["no harness task 'broken'", "broken.yaml"]
    elif case == "missing data file":
        shipped_yaml = (TASKS / "python_idioms.yaml").read_text()
        (tmp_path / "absent.yaml").write_text(shipped_yaml.replace("task: python_idioms", "task: absent")
                                              .replace("recipes/gates/tasks/python_idioms.jsonl", str(tmp_path / "absent.jsonl")))
        task, dirs, expected = {"name": "absent"}, [str(tmp_path)], ["task 'absent'", "cannot be loaded", "absent.jsonl"]
    elif case == "missing task dir":
        dirs, expected = [str(tmp_path / "nowhere")], ["task_dirs", "nowhere", "not a directory"]
    else:
        task, expected = {"name": "python_idioms", "metric": "f1"}, ["task 'python_idioms' does not report metric 'f1'", "acc,none"]
    with pytest.raises(GateError) as info:
        downstream_gate(EvaluationGate.model_validate({"tasks": [task], "task_dirs": dirs, "limit": 3}), *model_and_tokenizer, 0.05)
    message = str(info.value)
    assert "\n" not in message and all(part in message for part in expected), message


def test_no_tasks_is_skipped_and_max_drop_without_baseline_is_refused(model_and_tokenizer):
    assert downstream_gate(spec(), *model_and_tokenizer, 0.05).status == "skipped"
    with pytest.raises(GateError, match="max_drop of python_idioms needs a baseline"):
        downstream_gate(spec({"name": "python_idioms", "max_drop": 0.1}), *model_and_tokenizer, 0.05)


def test_evaluation_texts_are_every_example_with_its_choices_or_answer():
    everything = spec(*({"name": n} for n in SHIPPED))
    texts = evaluation_texts(everything)
    assert len(texts) == sum(len(lines(n)) for n in SHIPPED)
    idiom = lines("python_idioms")[0]
    assert "\n".join([idiom["context"], *idiom["choices"]]) in texts
    completion = lines("python_completion")[0]
    assert evaluation_texts(everything, "python_completion")[0] == f"{completion['context']}\n{completion['target']}"
    assert len(evaluation_texts(everything, "python_syntax")) == len(lines("python_syntax"))


def test_the_harness_opens_no_connection_and_writes_no_cache_outside_a_temporary_directory(model_and_tokenizer, tmp_path, monkeypatch):
    import socket

    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    result = downstream_gate(spec({"name": "python_completion", "metric": "exact_match"}, limit=2), *model_and_tokenizer, 0.05)
    assert result.evidence["tasks"]["python_completion"]["examples"] == 2
    assert not (tmp_path / "hf-datasets").exists() and datasets.config.HF_DATASETS_CACHE == tmp_path / "hf-datasets"


def test_the_shipped_task_data_is_what_make_tasks_writes(tmp_path, monkeypatch):
    """make_tasks.py is deterministic and every example checks out (it asserts so as it writes)."""
    import importlib.util

    loaded = importlib.util.spec_from_file_location("make_tasks", TASKS / "make_tasks.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for name in SHIPPED:
        assert (tmp_path / f"{name}.jsonl").read_text() == (TASKS / f"{name}.jsonl").read_text(), name
