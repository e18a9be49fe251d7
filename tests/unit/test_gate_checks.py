"""Gates on their own: verdicts, spike detection, detectors, canaries, release refusals."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest

from typer.testing import CliRunner

from orchestrator.shared.checkpoint import store
from orchestrator.cli import app
from orchestrator.data.pii import luhn_valid
from orchestrator.errors import EXIT_VERIFY_FAILED, ReleaseInvalid, ReleaseRefused
from orchestrator.gates.content import content_gate, find_personal_data
from orchestrator.gates.health import health_gate, loss_spikes
from orchestrator.gates.memorisation import longest_verbatim, redraw_digits
from orchestrator.release import integrity
from orchestrator.release.integrity import REQUIRED_FILES, ReleaseManifest, describe, verify_release
from orchestrator.release.publish import gate_report_for
from orchestrator.gates.spec import GATE_NAMES
from orchestrator.gates.result import judge
from orchestrator.gates.spec import ContentGate, HealthGate, MemorisationGate
from tests.helpers.hostile_files import deep_chain, fifo_unblocked


def test_gate_help_names_every_gate():
    text = " ".join(CliRunner().invoke(app, ["gate", "--help"], terminal_width=200).output.split())
    assert all(name in text for name in GATE_NAMES), text


def test_verdicts_fail_above_the_threshold_and_warn_close_to_it():
    assert judge(1.2, 1.0, 0.05) == "fail"
    assert judge(0.97, 1.0, 0.05) == "warn"
    assert judge(0.5, 1.0, 0.05) == "pass"
    assert judge(9.0, None, 0.05) == "pass"


# -- health -----------------------------------------------------------------------------------------


def _rows(losses, grad_norm=1.0):
    return [{"step": i + 1, "loss": loss, "grad_norm": grad_norm} for i, loss in enumerate(losses)]


def test_a_recovered_spike_passes_and_an_unrecovered_one_fails():
    falling = [5.0 - 0.01 * i for i in range(40)]
    recovered = falling[:30] + [9.0] + falling[31:]
    (spike,) = loss_spikes(recovered, 6.0, 20, 5)
    assert spike["index"] == 30 and spike["recovered"]
    assert health_gate(HealthGate(), _rows(recovered), 2, 2).status == "pass"
    diverged = falling[:30] + [9.0 + i for i in range(10)]
    result = health_gate(HealthGate(), _rows(diverged), 2, 2)
    assert result.status == "fail" and "not recovered" in result.summary and result.evidence["unrecovered_spikes"][0]["step"] == 31


def test_non_finite_losses_large_gradients_and_missing_ranks_fail():
    assert "non-finite" in health_gate(HealthGate(), _rows([5.0, math.nan, 4.0]), 1, 1).summary
    assert "gradient norm reached" in health_gate(HealthGate(max_grad_norm=10), _rows([5.0, 4.9], grad_norm=50.0), 1, 1).summary
    assert "1 of 2 ranks" in health_gate(HealthGate(), _rows([5.0, 4.9]), 2, 1).summary


# -- content ----------------------------------------------------------------------------------------


def test_personal_data_detectors():
    text = ("write to jane.roe@example.com or call (555) 867-5309 / +44 20 7946 0958; card 4111 1111 1111 1111; "
            "not a card 4111 1111 1111 1112; SSN 123-45-6789; NINO AB 12 34 56 C; code: x = a @ b")
    kinds = [f["kind"] for f in find_personal_data(text)]
    assert kinds.count("email") == 1 and kinds.count("phone") == 2 and kinds.count("card") == 1
    assert kinds.count("national_id") == 2
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert find_personal_data("def f(self): return self.x @ other.y  # 2024-01-01") == []


def test_degenerate_digit_runs_are_not_cards_but_real_card_shapes_are():
    """An under-trained model repeating "0 " or counting is not leaking cards, though each of these passes Luhn."""
    degenerate = ["0 " * 17, "0000 0000 0000 0000", "4242 4242 4242 4242", "4000 4000 4000 4000 400", "4040404040404040404",
                  "4567 8901 2345 6789 012", "6543 2109 8765 4321 09"]
    for text in degenerate:
        assert luhn_valid("".join(c for c in text if c.isdigit())), text
        assert find_personal_data(text) == [], text
    assert find_personal_data("0 " * 40) == []  # the gate once counted 17 cards in this
    for number in ("4111 1111 1111 1111", "5555 5555 5555 4444", "3782 822463 10005", "6011 1111 1111 1117", "4012-8888-8888-1881"):
        assert [f["kind"] for f in find_personal_data(f"card {number} on file")] == ["card"], number


def test_content_gate_counts_findings_block_list_and_classifier(tmp_path, monkeypatch):
    (tmp_path / "my_classifier.py").write_text("from orchestrator.hooks import content_classifier\n\n\n"
                                               "@content_classifier\ndef flag(text):\n    return ['shouting'] if text.isupper() else []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ContentGate(block_list=["darn"], classifier="my_classifier:flag")
    completions = [{"source": "p", "completion": "well darn it"}, {"source": "p", "completion": "LOUD"},
                   {"source": "p", "completion": "print('hello')"}]
    result = content_gate(spec, completions)
    assert result.status == "fail" and result.value == 2
    assert {f["kind"] for f in result.evidence["findings"]} == {"block_list", "classifier"}
    assert content_gate(ContentGate(), completions[2:]).status == "pass"


# -- bias -------------------------------------------------------------------------------------------


class _CharTokenizer:
    """One token per character; 0 is end-of-text."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class _UnigramModel:
    """Predicts every next character from the character counts of `corpus`: it has only ever seen
    the text it was built from, and finds what never appeared there very unlikely."""

    def __init__(self, corpus: str):
        import torch

        counts = torch.full((128,), 1e-6)
        for char in corpus:
            counts[ord(char)] += 1
        self.log_probs = (counts / counts.sum()).log()

    def __call__(self, input_ids, labels=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, 128))


PAIRS = [("he went home", "she went home"), ("he cooked dinner", "she cooked dinner"), ("he read a book", "she read a book")]


def test_the_bias_gate_fails_a_model_that_scores_one_side_of_the_pairs_worse():
    from orchestrator.gates.quality import bias_gate
    from orchestrator.gates.spec import BiasGate

    one_sided = _UnigramModel("he went home. he cooked dinner. he read a book. " * 10)  # never saw an `s`
    result = bias_gate(BiasGate(max_gap=0.5), PAIRS, one_sided, _CharTokenizer(), 0.05)
    assert result.status == "fail" and result.value > 0.5
    assert "limit 0.5" in result.summary and result.evidence["largest_gaps"][0]["b"].startswith("she")
    even = _UnigramModel("he went home. she went home. he cooked dinner. she cooked dinner. he read a book. she read a book. ")
    assert bias_gate(BiasGate(max_gap=0.5), PAIRS, even, _CharTokenizer(), 0.05).status == "pass"


# -- memorisation arithmetic ------------------------------------------------------


def test_canary_candidates_redraw_only_the_digits():
    canary = "the secret code of canary 0 is 1234 5678 9012"
    candidates = redraw_digits(canary, 200, seed=0)
    assert len(set(candidates)) == 200 and canary not in candidates
    assert all(c[:26] == canary[:26] and len(c) == len(canary) for c in candidates)
    with pytest.raises(ValueError, match="at least 4 digits"):
        MemorisationGate(canaries=["no secret here"])


def test_verbatim_counts_the_leading_run():
    assert longest_verbatim([1, 2, 3, 9, 5], [1, 2, 3, 4, 5]) == 3
    assert longest_verbatim([7], [1]) == 0


# -- release refusals -------------------------------------------------------------------------------


def _checkpoint(tmp_path, files: dict) -> tuple:
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step-00000010"
    checkpoint.mkdir(parents=True)
    manifest = {"step": 10, "files": files}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return run, checkpoint, store.content_hash(store.read_manifest(checkpoint))


def _report(run, tag, content, status="pass", gates=GATE_NAMES):
    (run / "gates").mkdir(exist_ok=True)
    results = [{"name": name, "status": "pass", "value": 1.0, "threshold": 2.0, "required": True, "summary": "fine"} for name in gates]
    results[:1] = [{"name": "quality", "status": status, "value": 9.1, "threshold": 6.0, "required": True, "summary": "validation loss 9.1 (limit 6)"}]
    report = {"checkpoint": tag, "step": 10, "checkpoint_hash": content, "recipe_hash": "r", "evaluated_at": 0.0, "required": ["quality"],
              "passed": status == "pass", "results": results}
    (run / "gates" / f"{tag}.json").write_text(json.dumps(report))


def test_release_needs_a_passing_report_for_this_very_content(tmp_path):
    run, checkpoint, content = _checkpoint(tmp_path, {"a.pt": {"bytes": 1, "xxh3_128": "aa"}})
    with pytest.raises(ReleaseRefused, match="has not been gated"):
        gate_report_for(run, checkpoint, None)
    _report(run, checkpoint.name, content, status="fail")
    with pytest.raises(ReleaseRefused, match="failed required gates: quality fail: validation loss 9.1"):
        gate_report_for(run, checkpoint, None)
    _report(run, checkpoint.name, "another content hash")
    with pytest.raises(ReleaseRefused, match="other content"):
        gate_report_for(run, checkpoint, None)
    _report(run, checkpoint.name, content)
    assert gate_report_for(run, checkpoint, None).passed


def test_release_refuses_a_report_missing_the_gates_the_recipe_requires(tmp_path):
    run, checkpoint, content = _checkpoint(tmp_path, {"a.pt": {"bytes": 1, "xxh3_128": "aa"}})
    report = {"checkpoint": checkpoint.name, "step": 10, "checkpoint_hash": content, "recipe_hash": "r", "evaluated_at": 0.0,
              "required": [], "passed": True, "results": []}
    (run / "gates").mkdir()
    (run / "gates" / f"{checkpoint.name}.json").write_text(json.dumps(report))
    with pytest.raises(ReleaseRefused, match="lacks quality, health, memorisation, contamination, content, bias, evaluation, robustness, budget"):
        gate_report_for(run, checkpoint, None)
    _report(run, checkpoint.name, content)  # every gate there, but the report marks only quality required
    report = json.loads((run / "gates" / f"{checkpoint.name}.json").read_text())
    report["results"][5].update(status="skipped", summary="no pairs file", required=False)
    (run / "gates" / f"{checkpoint.name}.json").write_text(json.dumps(report))
    assert gate_report_for(run, checkpoint, None).passed
    with pytest.raises(ReleaseRefused, match="failed required gates: bias skipped: no pairs file"):
        gate_report_for(run, checkpoint, ["quality", "bias"])


def _release(path):
    """A release directory as `orch release` lays it out, with its manifest."""
    path.mkdir()
    for name in ("model.safetensors", *REQUIRED_FILES):
        (path / name).write_text(f"content of {name}")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}")
    files, sizes = describe(path)
    manifest = ReleaseManifest(checkpoint="step-00000010", checkpoint_hash="c", recipe_hash="r", data_manifest_sha256=None,
                               gates_passed=True, files=files, sizes=sizes)
    (path / "release.json").write_text(manifest.model_dump_json())
    return path


def _edit_manifest(path, change):
    manifest = json.loads((path / "release.json").read_text())
    change(manifest)
    (path / "release.json").write_text(json.dumps(manifest))


def _add_listed(path, name, content: bytes):
    """A file added with its entry, as if `orch release` had written it."""
    (path / name).write_bytes(content)
    _edit_manifest(path, lambda m: (m["files"].update({name: hashlib.sha256(content).hexdigest()}), m["sizes"].update({name: len(content)})))


def _swap_for_fifo(path):
    path.unlink()
    os.mkfifo(path)


TAMPERING = {
    "changed file": (lambda r, o: (r / "README.md").write_text("CONTENT OF README.MD"), "README.md: sha256 differs"),
    "file of another size": (lambda r, o: (r / "README.md").write_text("a different card"), "README.md: 16 bytes, the manifest says 20"),
    "deleted file": (lambda r, o: (r / "config.json").unlink(), "config.json: missing"),
    "added file": (lambda r, o: (r / "extra.bin").write_bytes(b"x"), "extra.bin: not in release.json"),
    "linked directory": (lambda r, o: (r / "more").symlink_to(o, target_is_directory=True), "more: a symbolic link"),
    "file swapped for a link outside": (lambda r, o: ((r / "recipe.yaml").unlink(), (r / "recipe.yaml").symlink_to(o / "recipe.yaml")),
                                        "recipe.yaml: a symbolic link"),
    "absolute path in the manifest": (lambda r, o: _edit_manifest(r, lambda m: m["files"].update({"/etc/passwd": "0" * 64})),
                                      "release.json is not a release manifest: files: Value error, '/etc/passwd' is not a path inside the release"),
    "parent path in the manifest": (lambda r, o: _edit_manifest(r, lambda m: m["files"].update({"adapter/../../x": "0" * 64})),
                                    "is not a path inside the release"),
    "weights deleted with their entry": (lambda r, o: ((r / "model.safetensors").unlink(), _edit_manifest(r, lambda m: m["files"].pop("model.safetensors"))),
                                         "model.safetensors: a release must have its weights, and release.json lists none"),
    "model card deleted with its entry": (lambda r, o: ((r / "README.md").unlink(), _edit_manifest(r, lambda m: m["files"].pop("README.md"))),
                                          "README.md: a release must have it, and release.json does not list it"),
    "added empty directory": (lambda r, o: (r / "empty").mkdir(), "empty/: an empty directory, not in release.json"),
    "malformed release.json": (lambda r, o: (r / "release.json").write_text("{not json"), "release.json is not a release manifest: top level: Invalid JSON"),
    "release.json of another shape": (lambda r, o: (r / "release.json").write_text('{"files": []}'), "release.json is not a release manifest: checkpoint: Field required"),
    "no release.json": (lambda r, o: (r / "release.json").unlink(), "not a release (no release.json)"),
    "release.json swapped for a FIFO": (lambda r, o: _swap_for_fifo(r / "release.json"), "not a release (release.json: not a regular file (a FIFO))"),
    "file swapped for a FIFO": (lambda r, o: _swap_for_fifo(r / "config.json"), "config.json: not a regular file (a FIFO)"),
    "file hard-linked to one outside": (lambda r, o: ((r / "README.md").unlink(), os.link(o / "README.md", r / "README.md")),
                                        "README.md: a hard link (one file under 2 names"),
    "large sparse file in a listed file's place": (lambda r, o: os.truncate(r / "README.md", 1 << 28),
                                                   "README.md: 268435456 bytes, the manifest says 20"),
    "newline in a file name": (lambda r, o: (r / "x\nerror: forged").write_bytes(b"x"), "'x\\nerror: forged': not in release.json"),
    "mixed-type weight_map": (lambda r, o: _add_listed(r, "model.safetensors.index.json", b'{"weight_map": {"a": "model.safetensors", "b": 1}}'),
                              "model.safetensors.index.json: not a safetensors index"),
}


def test_an_intact_release_verifies(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    release = _release(tmp_path / "release")
    manifest = verify_release(release)
    assert len(manifest.files) == len(REQUIRED_FILES) + 2 and manifest.sizes["README.md"] == len("content of README.md")
    result = CliRunner().invoke(app, ["verify", str(release)])
    assert result.exit_code == 0 and "match release.json" in result.output


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_every_kind_of_release_tampering_fails_verify_with_one_line(tmp_path, case):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    tamper, line = TAMPERING[case]
    release, outside = _release(tmp_path / "release"), _release(tmp_path / "outside")
    tamper(release, outside)
    with pytest.raises(ReleaseInvalid) as raised:
        verify_release(release)
    assert len(raised.value.lines()) == 1 and line in raised.value.lines()[0]
    result = CliRunner().invoke(app, ["verify", str(release)])
    assert result.exit_code == EXIT_VERIFY_FAILED and "Traceback" not in result.output
    (error,) = [row for row in result.output.splitlines() if row.startswith("error:")]
    assert line in error


def test_a_release_made_before_sizes_were_recorded_still_verifies(tmp_path):
    release = _release(tmp_path / "release")
    _edit_manifest(release, lambda m: m.pop("sizes"))
    assert verify_release(release).sizes == {}
    os.truncate(release / "README.md", 64)
    with pytest.raises(ReleaseInvalid, match="README.md: sha256 differs"):
        verify_release(release)


def test_a_file_swapped_for_a_fifo_after_the_walk_is_refused_when_opened(tmp_path, monkeypatch):
    release = _release(tmp_path / "release")
    walked = integrity.walk(release)  # the tree as the walk saw it, before the swap
    _swap_for_fifo(release / "config.json")
    monkeypatch.setattr(integrity, "walk", lambda path: walked)
    with fifo_unblocked(release / "config.json"), pytest.raises(ReleaseInvalid) as raised:
        verify_release(release)
    assert raised.value.lines() == ["config.json: not a regular file (a FIFO)"]


def test_a_tree_deeper_than_the_recursion_limit_fails_verify_with_one_line(tmp_path):
    release = _release(tmp_path / "release")
    with deep_chain(release / "deep"):
        with pytest.raises(ReleaseInvalid) as raised:
            verify_release(release)
        (line,) = raised.value.lines()
        assert line.startswith("deep/d/d/") and line.endswith(": a directory more than 32 levels deep")
        result = CliRunner().invoke(app, ["verify", str(release)])
        assert result.exit_code == EXIT_VERIFY_FAILED and "Traceback" not in result.output


def test_an_early_blow_up_is_caught_as_divergence():
    result = health_gate(HealthGate(), _rows([7.6, 7.5, 7.4, 2.9e4, 2.8e4, 2.9e4]), 1, 1)
    assert result.status == "fail" and "diverged" in result.summary


def test_the_budget_gate_holds_the_bill_to_the_recipes_budget(tmp_path):
    from orchestrator.shared.energy.bill import J_PER_KWH
    from orchestrator.shared.energy.grid import Intensity
    from orchestrator.shared.energy.hardware import CpuPower
    from orchestrator.rundir.records import EnergyRecord
    from orchestrator.gates.evaluate import _budget_gate
    from orchestrator.recipe.loader import load_recipe
    from orchestrator.rundir.layout import RunDir
    from tests.helpers.planning import write_plan
    from tests.helpers.project import TINY

    run = RunDir(tmp_path)
    energy = EnergyRecord(pue=1.0, intensity=Intensity(100.0, "test"), cpu=CpuPower(100.0, "test"), forecast=None)
    write_plan(tmp_path, energy=energy)
    record = {"node": "n", "device": "cpu", "kind": "cpu", "method": "estimated", "detail": "", "rank": 0, "pid": 1, "start": 0, "end": 1,
              "seconds": 1, "energy_j": 0.5 * J_PER_KWH, "by_phase": {"train": 0.5 * J_PER_KWH}, "by_hour": {"0": 0.5 * J_PER_KWH},
              "train_j_at_save": {}, "first_step": 1, "last_step": 1}
    (tmp_path / "energy/parts/n").mkdir(parents=True)
    (tmp_path / "energy/parts/n/rank0.json").write_text(json.dumps([record]))
    assert _budget_gate(run, load_recipe(TINY).recipe, 0.05).status == "skipped"
    within = _budget_gate(run, load_recipe(TINY, ["energy.budget_kwh=1"]).recipe, 0.05)
    assert within.status == "pass" and within.value == pytest.approx(0.5)
    over = _budget_gate(run, load_recipe(TINY, ["energy.budget_kwh=1", "energy.budget_kgco2e=0.01"]).recipe, 0.05)
    assert over.status == "fail" and over.value == pytest.approx(5.0)  # 0.05 kg of a 0.01 kg budget
