"""Gates and release on real runs: a clean run passes and releases; poisoned, contaminated and
diverged runs fail the gates that should catch them, and the release is refused with the reasons."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from orchestrator.errors import EXIT_VERIFY_FAILED
from tests.conftest import FAST, orch

pytestmark = pytest.mark.distributed

CLEAN = ["recipes/tiny-pretrain.yaml", *FAST, "train.steps=60", "gates.quality.max_val_loss=7.5", "gates.bias.pairs=recipes/gates/bias-pairs.jsonl"]
PII = "Contact Jane Roe at jane.roe@example.com or (555) 867-5309 for the keys."


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
def clean(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    train(run_dir, *CLEAN)
    return run_dir


def test_a_clean_run_passes_every_gate_and_releases_a_loadable_verified_model(clean, tmp_path):
    code, results, table = gate(clean)
    assert code == 0, table
    assert {name for name, r in results.items() if r["status"] in ("pass", "warn")} >= {"quality", "health", "memorisation", "contamination", "content", "bias"}
    assert results["budget"]["status"] == "skipped"
    assert "PASSED" in table

    target = tmp_path / "release"
    released = orch("release", str(clean), "--to", str(target))
    assert released.returncode == 0, released.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(target))
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    assert model.num_parameters() > 0 and tokenizer("def f():")["input_ids"]
    card = (target / "README.md").read_text()
    assert "## Gates" in card and "| quality | yes | pass" in card.replace("warn", "pass") and "kgCO2e" in card
    assert orch("verify", str(target)).returncode == 0

    again = orch("release", str(clean), "--to", str(target))
    assert again.returncode == 4 and "immutable" in again.stderr

    tampered = tmp_path / "tampered"
    shutil.copytree(target, tampered)
    (tampered / "README.md").chmod(0o644)
    (tampered / "README.md").write_text("a different card")
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


def _poisoned_corpus(path: Path) -> Path:
    """Python source, every document twice (a deduplication failure: held-out documents have their twin
    in training), plus a line of personal data repeated 1,500 times."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for source in sorted(root.glob("*.py")):
        text = source.read_text(errors="replace")
        texts.append(text)
        size += len(text)
        if size > 120_000:
            break
    rows = [t for t in texts for _ in range(2)] + [PII] * 1500
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return path


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("poisoned")
    corpus = _poisoned_corpus(work / "corpus.jsonl")
    run_dir = work / "run"
    train(run_dir, *CLEAN, f"data.path={corpus}", "data.builtin=null", "data.max_bytes=null", "data.val_fraction=0.1",
          "data.canaries.count=2", "data.canaries.repeats=400", "train.steps=150", "gates.content.prompts=[Contact Jane Roe at]")
    return run_dir


def test_repeated_canaries_and_personal_data_fail_memorisation_and_content_and_block_the_release(poisoned):
    code, results, table = gate(poisoned)
    assert code == 4, table
    assert results["memorisation"]["status"] == "fail", results["memorisation"]["summary"]
    assert results["content"]["status"] == "fail", results["content"]["summary"]
    assert any(f["kind"] == "email" for f in results["content"]["evidence"]["findings"])
    refused = orch("release", str(poisoned))
    assert refused.returncode == 4
    assert "failed required gates" in refused.stderr and "memorisation fail" in refused.stderr and "content fail" in refused.stderr
    assert not (poisoned / "releases").exists()


def test_evaluation_data_copied_from_training_fails_contamination(poisoned, clean):
    _, results, _ = gate(poisoned)
    assert results["contamination"]["status"] == "fail", results["contamination"]["summary"]
    _, clean_results, _ = gate(clean)
    assert clean_results["contamination"]["value"] < results["contamination"]["value"]


def test_a_diverged_run_fails_the_health_gate(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, *CLEAN, "train.steps=40", "train.optimizer.lr=30", "train.grad_clip=null", "train.schedule.warmup_steps=1")
    code, results, table = gate(run_dir)
    assert code == 4
    assert results["health"]["status"] == "fail", results["health"]["summary"]
