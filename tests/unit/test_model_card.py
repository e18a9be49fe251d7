"""The model card's technical documentation (EU AI Act, Annex XI) is computed from the run's records.

A run directory is built without training: a real plan of the tiny recipe, a data manifest with
its source list, an event log, an energy bill and a gate report; the card's compute, energy, data
and uses are checked against those records.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from orchestrator.shared.energy.bill import make_bill
from orchestrator.rundir.bill import EnergyBill, bill_json
from orchestrator.shared.energy.grid import Intensity
from orchestrator.release.annex import HEADING, RunRecords, technical_figures
from orchestrator.release.card import model_card
from orchestrator.release.card_spec import CardSpec
from orchestrator.gates.outcome import GateReport
from orchestrator.gates.result import GateResult
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan, recipe_yaml, write_data
from orchestrator.shared.data.prepared import PreparedData, parse_manifest
from orchestrator.rundir.rows import Checkpoint, Start
from tests.helpers.planning import write_plan
from tests.helpers.project import TINY

STEP = 20
RELEASED = datetime(2026, 11, 30, 9, 15, tzinfo=timezone.utc)
SOURCES = [{"path": f"/corpus/part-{i}.txt", "sha256": f"{i:x}" * 64, "bytes": 1000 + i} for i in range(1, 4)]
CARD = ["card.provider=Example Lab", "card.licence=Apache-2.0", "card.intended_uses=[code completion research]",
        "card.excluded_uses=[medical advice, hiring decisions]", "card.limitations=[knows only Python]"]
SCORES = {"arc_easy": 0.4125, "hellaswag": {"acc": 0.3, "acc_norm": 0.31}}


def make_run(root: Path, *overrides: str, curation: dict | None = None) -> RunDir:
    run = RunDir(root / "run")
    write_plan(run.path)
    run.recipe.write_text(recipe_yaml(load_recipe(TINY, list(overrides)).recipe))
    data_dir = root / "data"
    data_dir.mkdir()
    (data_dir / "sources.json").write_text(json.dumps(SOURCES))
    manifest = {"vocab_size": 2048, "train_tokens": 900_000, "val_tokens": 20_000, "documents": {"train": 490, "val": 10},
                "canaries": ["the secret code of canary 0 is 1234 5678 9012"]}
    write_data(run, PreparedData(data_dir, parse_manifest({**manifest, **({"curation": curation} if curation else {})})))
    events.append(run.events, Start(step=0))
    events.append(run.events, Checkpoint(step=STEP, stall_s=0.1, write_s=0.2, bytes=100))
    return run


def gate_report(results: list[GateResult] | None = None) -> GateReport:
    results = results or [
        GateResult("quality", "pass", 5.25, 7.5, "val loss 5.25, perplexity 190"),
        GateResult("evaluation", "warn", 0.4125, 0.4, "2 tasks", {"scores": SCORES}),
        GateResult("budget", "skipped", None, None, "no energy or carbon budget"),
    ]
    return GateReport.judge(results, {"quality", "evaluation"}, checkpoint=f"step-{STEP:08d}", step=STEP, checkpoint_hash="c0ffee",
                            recipe_hash="r", evaluated_at=1_700_000_000.0)


def _bill_records() -> list[dict]:
    """One node's meters over a minute: a CPU energy counter and an estimated memory draw."""
    def record(device: str, kind: str, method: str, joules: float) -> dict:
        return {"node": "n1", "device": device, "kind": kind, "method": method, "detail": "", "rank": 0, "pid": 1,
                "start": 0.0, "end": 60.0, "seconds": 60.0, "energy_j": joules, "by_phase": {"train": joules},
                "by_hour": {"0": joules}, "train_j_at_save": {}, "first_step": 1, "last_step": STEP}

    return [record("cpu", "cpu", "counter", 4321.5), record("memory", "memory", "estimated", 123.4)]


def energy_bill() -> EnergyBill:
    return EnergyBill.model_validate(make_bill(_bill_records(), Intensity(350.0, "test grid"), 1.2, tokens=STEP * 2048, steps=STEP))


def figure(card: str, pattern: str) -> str:
    match = re.search(pattern, card, re.MULTILINE)
    assert match, f"no {pattern!r} in the card"
    return match.group(1)


def test_the_training_compute_is_the_plans_formula_times_the_tokens_of_the_released_steps(tmp_path):
    run = make_run(tmp_path, *CARD)
    card = model_card(run, gate_report(), energy_bill(), RELEASED)
    plan = read_plan(run)
    sizes, tokens = plan.model.sizes, STEP * plan.batch.tokens_per_step
    expected = (6 * plan.model.num_params + 12 * sizes.num_layers * sizes.hidden_size * plan.batch.seq_len) * tokens
    assert plan.estimate.flops_per_token * tokens == expected  # the plan records the same formula
    assert int(figure(card, r"= ([\d,]+) FLOPs$").replace(",", "")) == expected
    assert float(figure(card, r"training compute: (\S+) FLOPs")) == pytest.approx(expected, rel=1e-4)
    assert f"(6 x {plan.model.num_params:,} + 12 x {sizes.num_layers} x {sizes.hidden_size} x {plan.batch.seq_len}) " \
           f"x {STEP} x {plan.batch.tokens_per_step:,}" in card
    figures = technical_figures(RunRecords.read(run), gate_report(), energy_bill())
    assert figures["compute"]["flops"] == expected and figures["compute"]["tokens"] == tokens


def test_the_energy_is_the_bills_total_and_says_how_it_was_obtained(tmp_path):
    bill = energy_bill()
    card = model_card(make_run(tmp_path), gate_report(), bill, RELEASED)
    totals = json.loads(bill_json(bill))["totals"]  # as energy.json holds it
    assert float(figure(card, r"energy consumed: (\S+) kWh")) == float(f"{totals['kwh']:.6g}")
    assert f"= {totals['facility_kwh']:.6g} kWh at the facility" in card
    assert f"measured {totals['measured_kwh']:.6g} kWh" in card and f"estimated {totals['estimated_kwh']:.6g} kWh" in card
    assert "counter coverage 50% of device-seconds" in card and "1 cpu (counter), 1 memory (estimated)" in card
    assert f"{totals['kgco2e']:.6g} kgCO2e at 350.0 g/kWh (test grid)" in card


def test_a_run_without_energy_says_it_was_not_measured(tmp_path):
    run = make_run(tmp_path)
    card = model_card(run, gate_report(), None, RELEASED)
    assert "- energy consumed: not measured (energy.enabled was false for this run)" in card
    assert technical_figures(RunRecords.read(run), gate_report(), None)["energy"] is None


def test_every_source_file_and_the_data_counts_appear(tmp_path):
    card = model_card(make_run(tmp_path), gate_report(), None, RELEASED)
    for source in SOURCES:
        assert f"| {source['path']} | {source['bytes']:,} | {source['sha256']} |" in card
    assert "- source files: 3, 3,006 bytes" in card
    assert "train 490, val 10 documents; 900,000 training tokens, 20,000 held out" in card
    assert "- canaries: 1 random secrets inserted 1 time(s)" in card
    assert "- curation: none ran" in card


def test_curation_recorded_in_the_manifest_is_printed_as_it_is(tmp_path):
    curation = {"dedup": {"method": "minhash", "removed_documents": 12_345}, "pii": {"emails_redacted": 7}}
    card = model_card(make_run(tmp_path, curation=curation), gate_report(), None, RELEASED)
    assert "- curation:\n  - dedup.method: minhash\n  - dedup.removed_documents: 12,345\n  - pii.emails_redacted: 7" in card
    assert "curation: none ran" not in card


def test_uses_licence_and_limitations_come_from_the_recipe(tmp_path):
    card = model_card(make_run(tmp_path, *CARD), gate_report(), None, RELEASED)
    annex = card[card.index(HEADING):]
    assert "- provider: Example Lab" in annex and "- licence (1(f)): Apache-2.0" in annex
    assert "(1(a)):\n  - code completion research\n- excluded uses (1(b)):\n  - medical advice\n  - hiring decisions" in annex
    assert "### Known limitations\n- knows only Python\n- The gates test what they test" in annex


def test_the_release_date_is_stated_in_utc(tmp_path):
    """Annex XI 1(c) asks for the date of release: the moment `orch release` writes the card."""
    eastern = RELEASED.astimezone(timezone(timedelta(hours=-5)))
    card = model_card(make_run(tmp_path), gate_report(), None, eastern)
    assert "- release (1(c)): released 2026-11-30 09:15 UTC, checkpoint step-00000020" in card


def test_undeclared_uses_are_marked_not_stated(tmp_path):
    card = model_card(make_run(tmp_path, "card.licence=null", "card.intended_uses=[]", "card.excluded_uses=[]"), gate_report(), None, RELEASED)
    assert "  - not stated (`card.intended_uses` in the recipe)" in card
    assert "  - not stated (`card.excluded_uses` in the recipe)" in card
    assert "- licence (1(f)): not stated (`card.licence` in the recipe)" in card


def test_every_gate_and_the_downstream_scores_are_listed(tmp_path):
    card = model_card(make_run(tmp_path), gate_report(), None, RELEASED)
    assert "Gates on this checkpoint: passed; required: quality, evaluation." in card
    assert "- quality: pass, value 5.25 (limit 7.5): val loss 5.25, perplexity 190" in card
    assert "- evaluation: warn, value 0.4125 (limit 0.4): 2 tasks\n  - arc_easy: 0.4125\n  - hellaswag: acc 0.3, acc_norm 0.31" in card
    assert "- budget: skipped: no energy or carbon budget" in card


def test_the_training_time_runs_from_the_first_start_to_the_checkpoints_save(tmp_path):
    run = make_run(tmp_path)
    times = [e["time"] for e in run.history()]
    wall = technical_figures(RunRecords.read(run), gate_report(), None)["wall_s_to_checkpoint"]
    assert wall == pytest.approx(times[1] - times[0])
    assert f"- training time: {wall:,.0f} s from the run's first start" in model_card(run, gate_report(), None, RELEASED)


def test_the_shipped_tiny_recipes_declare_a_research_and_test_model():
    """Their `card` sections alone (the whole recipes are validated by the recipe tests)."""
    for name in ("tiny-pretrain.yaml", "tiny-finetune-lora.yaml"):
        card = CardSpec.model_validate(yaml.safe_load((TINY.parent / name).read_text())["card"])
        assert card.intended_uses and card.excluded_uses and card.licence and any("test" in use for use in card.intended_uses)


def test_a_release_writes_the_cards_figures_as_technical_json(tmp_path):
    from orchestrator.release.publish import _add_records

    run, bill = make_run(tmp_path), energy_bill()
    (run.energy_parts / "n1").mkdir(parents=True)  # the release computes the bill itself: from the same records
    (run.energy_parts / "n1" / "rank0-1.json").write_text(json.dumps(_bill_records()))
    release = tmp_path / "release"
    release.mkdir()
    _add_records(run, release, gate_report())
    technical = json.loads((release / "technical.json").read_text())
    card = (release / "README.md").read_text()
    energy = json.loads((release / "energy.json").read_text())["totals"]
    assert technical["energy"]["kwh"] == energy["kwh"] == pytest.approx(bill.totals.kwh)
    assert f"energy consumed: {technical['energy']['kwh']:.6g} kWh" in card
    assert f"= {technical['compute']['flops']:,} FLOPs" in card
