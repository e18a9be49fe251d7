"""The model card of a release: what was trained on what, for how long, what it cost, what it passed;
then its technical documentation after the EU AI Act's Annex XI (orchestrator/release/annex.py)."""

from __future__ import annotations

from datetime import datetime

from orchestrator.release.annex import RunRecords, technical_documentation
from orchestrator.gates.outcome import GateReport
from orchestrator.model.spec import ModelSpec
from orchestrator.rundir.bill import EnergyBill
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir


def _base_line(model: ModelSpec) -> str:
    if not model.path:
        return "- base model: none (random initialisation)"
    from orchestrator.model.pretrained import release_manifest_hash

    digest = release_manifest_hash(model.path)
    lora = model.lora
    adapter = f"; LoRA rank {lora.rank} on {', '.join(lora.target_modules)} (adapter in `adapter/`, merged into the weights)" if lora else ""
    return f"- base model: {model.path}" + (f" (its release manifest sha256 {digest})" if digest else "") + adapter


def model_card(run: RunDir, report: GateReport, bill: EnergyBill | None, released: datetime) -> str:
    records = RunRecords.read(run)
    recipe, plan, data = records.recipe, records.plan, records.data.manifest
    summary = read_summary(run)
    model, train = recipe.model, recipe.train
    source = ", ".join(f"{s.path or f'built-in corpus `{s.builtin}`'}" + (f" (weight {s.weight:g})" if recipe.data.sources else "")
                       for s in recipe.data.mixture())
    tokens_per_step = plan.batch.tokens_per_step
    lines = [
        f"# {recipe.name} ({report.checkpoint})",
        "",
        recipe.description or f"A {model.arch or 'causal'} language model, task `{recipe.task}`.",
        "",
        "## Model",
        f"- architecture: {model.arch or model.path}, {plan.model.num_params:,} parameters",
        _base_line(model),
        f"- context: {recipe.data.seq_len} tokens; tokenizer: {recipe.data.tokenizer.kind}, {data.vocab_size:,} ids",
        "",
        "## Training",
        f"- data: {source}; {data.train_tokens:,} training tokens, {data.val_tokens:,} held out"
        + (f"; {len(data.canaries)} canaries inserted" if data.canaries else ""),
        f"- {report.step} steps of {tokens_per_step:,} tokens ({report.step * tokens_per_step:,} tokens)",
        f"- {plan.backend} on {plan.topology.world_size} process(es), {plan.topology.device}, {train.precision}",
        f"- recipe hash {report.recipe_hash}; checkpoint content {report.checkpoint_hash}",
    ]
    if summary:
        lines.append(f"- final training loss {summary.final_loss:.4f}, wall {summary.wall_s:.0f} s, {summary.restarts} restart(s)")
    lines += ["", "## Energy and carbon"]
    if bill:
        t = bill.totals
        lines.append(f"- {t.kwh:.6g} kWh IT (measured {t.measured_kwh:.6g}, estimated {t.estimated_kwh:.6g}; "
                     f"counter coverage {t.coverage:.0%}), x PUE {t.pue:g} = {t.facility_kwh:.6g} kWh")
        lines.append(f"- {t.kgco2e:.6g} kgCO2e at {t.intensity.g_per_kwh:.1f} g/kWh ({t.intensity.source})")
    else:
        lines.append("- not measured (energy.enabled was false)")
    lines += ["", "## Gates", "", "| gate | required | status | value | limit | evidence |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report.results:
        value = "" if r.value is None else f"{r.value:.4g}"
        limit = "" if r.threshold is None else f"{r.threshold:.4g}"
        lines.append(f"| {r.name} | {'yes' if r.required else 'no'} | {r.status} | {value} | {limit} | {r.summary} |")
    lines += ["", *technical_documentation(records, report, bill, released), "",
              "Files: see `release.json` (sha256 of every file), `gates.json`, `energy.json`, `technical.json`, `recipe.yaml`, `data.json`."]
    return "\n".join(lines) + "\n"
