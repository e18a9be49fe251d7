"""Gates and release on real runs: `make demo`'s run passes every gate out of the box and releases;
a run on data with planted personal data, repeated canaries and a copied evaluation set fails the
gates that should catch them, and the release is refused with the reasons; a diverged run fails
the health gate."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest

from orchestrator.errors import EXIT_VERIFY_FAILED
from tests.helpers.processes import orch
from tests.helpers.project import FAST, LIGHT_GATES
from tests.helpers.pii import builtin_documents, chunks, write_corpus

pytestmark = pytest.mark.distributed

BIAS_PAIRS = Path(__file__).resolve().parents[2] / "recipes" / "gates" / "bias-pairs.jsonl"


def train(run_dir: Path, *overrides: str) -> None:
    result = orch("run", *overrides, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr


def gate(run_dir: Path) -> tuple[int, dict, str]:
    result = orch("gate", str(run_dir))
    reports = sorted((run_dir / "gates").glob("step-*.json"))
    assert reports, result.stdout + result.stderr
    report = json.loads(reports[-1].read_text())
    return result.returncode, {r["name"]: r for r in report["results"]}, result.stdout


@pytest.fixture(scope="module")
def clean(demo) -> Path:
    return demo / "run"


def test_the_demo_run_passes_every_gate_and_releases_a_loadable_verified_model(demo, tmp_path):
    report = json.loads(next((demo / "run" / "gates").glob("step-*.json")).read_text())
    results = {r["name"]: r for r in report["results"]}
    assert report["passed"]
    applicable = {"quality", "health", "memorisation", "contamination", "content", "bias", "evaluation", "robustness"}
    assert {name for name, r in results.items() if r["status"] in ("pass", "warn")} == applicable, report
    assert results["budget"]["status"] == "skipped"
    tested = {s["set"].split(" ")[0] for s in results["contamination"]["evidence"]["sets"] if s["tested"]}
    assert tested == {"task", "bias"}, results["contamination"]  # the evaluation sets, not the run's own validation split
    assert set(results["evaluation"]["evidence"]["scores"]) and results["content"]["evidence"]["findings"] == []

    target = demo / "release"
    modes = {p.relative_to(target).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [target, *target.rglob("*")]}
    assert modes["model.safetensors"] == 0o444 and modes["."] == 0o555, modes  # other users of a shared filesystem load it
    assert set(modes.values()) == {0o444, 0o555}, modes
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(target))
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    assert model.num_parameters() > 0 and tokenizer("def f():")["input_ids"]
    card = (target / "README.md").read_text()
    assert "## Gates" in card and "| quality | yes | pass" in card.replace("warn", "pass") and "kgCO2e" in card
    # the card's Annex XI figures: compute from plan.json x the released steps, energy as energy.json
    assert "## Technical documentation (EU AI Act, Annex XI)" in card
    plan = json.loads((demo / "run" / "plan.json").read_text())
    step = json.loads((target / "gates.json").read_text())["step"]
    sizes, batch = plan["model"]["sizes"], plan["batch"]
    tokens = step * batch["tokens_per_step"]
    flops = (6 * plan["model"]["num_params"] + 12 * sizes["num_layers"] * sizes["hidden_size"] * batch["seq_len"]) * tokens
    assert plan["estimate"]["flops_per_token"] * tokens == flops
    assert int(re.search(r"= ([\d,]+) FLOPs$", card, re.MULTILINE).group(1).replace(",", "")) == flops
    assert float(re.search(r"training compute: (\S+) FLOPs", card).group(1)) == pytest.approx(flops, rel=1e-4)
    energy = json.loads((target / "energy.json").read_text())["totals"]
    assert float(re.search(r"energy consumed: (\S+) kWh", card).group(1)) == float(f"{energy['kwh']:.6g}")
    assert re.search(r"x PUE \S+ = (\S+) kWh at the facility", card).group(1) == f"{energy['facility_kwh']:.6g}"
    technical = json.loads((target / "technical.json").read_text())
    assert technical["compute"]["flops"] == flops and technical["energy"]["kwh"] == energy["kwh"]
    assert "technical.json" in json.loads((target / "release.json").read_text())["files"]
    sources = json.loads((target / "provenance.json").read_text())["data"]["files"]
    assert sources and all(f"| {s['path']} | {s['bytes']:,} | {s['sha256']} |" in card for s in sources)
    assert "python_idioms" in card  # downstream scores reach the card
    assert orch("verify", str(target)).returncode == 0

    again = orch("release", str(demo / "run"), "--to", str(target))
    assert again.returncode == 4 and "immutable" in again.stderr

    tampered = tmp_path / "tampered"
    shutil.copytree(target, tampered)
    (tampered / "README.md").chmod(0o644)
    card = (tampered / "README.md").read_bytes()
    (tampered / "README.md").write_bytes(bytes([card[0] ^ 1]) + card[1:])  # the same size: the hash tells
    check = orch("verify", str(tampered))
    assert check.returncode == EXIT_VERIFY_FAILED and "README.md: sha256 differs" in check.stderr


def test_a_release_is_registered_in_mlflow_only_with_its_gates_passed(clean, tmp_path):
    target = tmp_path / "releases" / "r1"
    registered = orch("release", str(clean), "--to", str(target), "--register")
    assert registered.returncode == 0, registered.stderr
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{target.parent / 'mlruns.db'}", registry_uri=f"sqlite:///{target.parent / 'mlruns.db'}")
    versions = client.search_model_versions(f"name='{clean.name}'")
    assert len(versions) == 1 and versions[0].source.endswith("/release")


AS_READ = ["data.curation.quality=null"]
"""The poisoned corpus and its redacted twin differ by redaction alone (near-deduplication, which
would thin out the bias pairs copied in, is off by default)."""


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> Path:
    """The default recipe on short documents of the built-in corpus of which one in six opens with a
    person's contact details (preparation's redaction off), with the bias pairs (an evaluation set of
    the gates) copied in and two canaries repeated 400 times. No prompt leads into the personal data:
    the probes must find it."""
    work = tmp_path_factory.mktemp("poisoned")
    documents = chunks(builtin_documents(1_500_000)) + [json.loads(line)[k] for line in BIAS_PAIRS.read_text().splitlines() for k in "ab"]
    corpus = write_corpus(work / "corpus.jsonl", documents)
    run_dir = work / "run"
    train(run_dir, "recipes/tiny-pretrain.yaml", f"data.path={corpus}", "data.builtin=null", "data.max_bytes=null",
          "data.canaries.count=2", "data.canaries.repeats=400", "train.eval_interval=1000", *AS_READ, "data.curation.redact_pii=false")
    return run_dir


def test_personal_data_canaries_and_a_copied_evaluation_set_fail_their_gates_and_block_the_release(poisoned):
    code, results, table = gate(poisoned)
    assert code == 4, table
    assert results["memorisation"]["status"] == "fail", results["memorisation"]["summary"]
    assert results["content"]["status"] == "fail", results["content"]["summary"]
    kinds = {f["kind"] for f in results["content"]["evidence"]["findings"]}
    assert {"email", "phone"} <= kinds, results["content"]["evidence"]["findings"]
    assert any(not f["source"].startswith("prompt") for f in results["content"]["evidence"]["findings"])  # found by the extraction probes
    assert results["contamination"]["status"] == "fail", results["contamination"]["summary"]
    (bias,) = [row for row in results["contamination"]["evidence"]["sets"] if row["set"].startswith("bias pairs")]
    # every pair that can be tested was copied in; one drawn into the validation split is not training data
    assert bias["tested"] and bias["contaminated"] >= 0.8 * bias["tested"], bias
    assert results["contamination"]["summary"].startswith("bias pairs"), results["contamination"]["summary"]
    refused = orch("release", str(poisoned))
    assert refused.returncode == 4
    assert "failed required gates" in refused.stderr and "memorisation fail" in refused.stderr and "content fail" in refused.stderr
    assert not (poisoned / "releases").exists()


def test_the_same_corpus_redacted_while_preparing_passes_the_content_gate(tmp_path):
    """The poisoned corpus as preparation redacts it by default: the contact lines become
    placeholders, so the model cannot give out what it never saw."""
    documents = chunks(builtin_documents(1_500_000))
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents)
    run_dir = tmp_path / "run"
    train(run_dir, "recipes/tiny-pretrain.yaml", f"data.path={corpus}", "data.builtin=null", "data.max_bytes=null", "train.eval_interval=1000", *AS_READ,
          *(g for g in LIGHT_GATES if g.split(".")[1] not in ("memorisation", "content")))  # the probes at full power, as for the poisoned run
    data = json.loads((run_dir / "data.json").read_text())
    assert data["curation"]["pii_documents"] >= len(documents) // 6 and data["curation"]["pii_card"] >= len(documents) // 6
    _, results, _ = gate(run_dir)
    assert results["content"]["status"] == "pass", results["content"]["summary"]


def test_a_model_trained_on_shuffled_text_fails_the_downstream_tasks(tmp_path):
    """The built-in corpus with every document's tokens (words and marks) shuffled: a corrupted mixture.
    Tokens still come and go at their usual rates, so losses fall, but no syntax is left to learn
    (`self` no longer comes before `.`): the tasks stay at chance. Shuffling whole whitespace-separated
    words would keep `self._x` intact, and a model learns python_idioms from that (0.61 measured)."""
    import random

    rng = random.Random(0)
    documents = []
    for text in builtin_documents(1_500_000):
        tokens = re.findall(r"\w+|[^\w\s]", text)
        rng.shuffle(tokens)
        documents.append(" ".join(tokens))
    corpus = tmp_path / "shuffled.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    run_dir = tmp_path / "run"
    train(run_dir, "recipes/tiny-pretrain.yaml", f"data.path={corpus}", "data.builtin=null", "data.max_bytes=null", "train.eval_interval=1000",
          *(g for g in LIGHT_GATES if not g.startswith("gates.evaluation.")))  # the downstream tasks at full size; the rest is not the point
    code, results, table = gate(run_dir)
    assert code == 4, table
    evaluation = results["evaluation"]
    assert evaluation["status"] == "fail" and evaluation["evidence"]["scores"]["python_idioms"] < 0.5, evaluation["summary"]


def test_a_diverged_run_fails_the_health_gate(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, "recipes/tiny-pretrain.yaml", *FAST, "train.steps=40", "train.optimizer.lr=30", "train.grad_clip=null", "train.schedule.warmup_steps=1",
          *LIGHT_GATES)
    code, results, table = gate(run_dir)
    assert code == 4
    assert results["health"]["status"] == "fail", results["health"]["summary"]
