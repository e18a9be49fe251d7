"""The model card of a release: what was trained on what, for how long, what it cost, what it passed."""

from __future__ import annotations

import yaml

from orchestrator.rundir import RunDir


def _base_line(model: dict) -> str:
    if not model.get("path"):
        return "- base model: none (random initialisation)"
    from pathlib import Path

    from orchestrator.model.pretrained import release_manifest_hash

    digest = release_manifest_hash(Path(model["path"]))
    lora = model.get("lora")
    adapter = f"; LoRA rank {lora['rank']} on {', '.join(lora['target_modules'])} (adapter in `adapter/`, merged into the weights)" if lora else ""
    return f"- base model: {model['path']}" + (f" (its release manifest sha256 {digest})" if digest else "") + adapter


def model_card(run: RunDir, report: dict, bill: dict | None) -> str:
    recipe = yaml.safe_load(run.recipe.read_text())
    plan = run.read_json(run.plan.name)
    data = run.read_json(run.data.name)
    summary = run.read_json(run.summary.name) if run.summary.exists() else {}
    model, train = recipe["model"], recipe["train"]
    source = recipe["data"].get("path") or f"built-in corpus `{recipe['data'].get('builtin')}`"
    lines = [
        f"# {recipe['name']} ({report['checkpoint']})",
        "",
        recipe.get("description") or f"A {model.get('arch') or 'causal'} language model, task `{recipe['task']}`.",
        "",
        "## Model",
        f"- architecture: {model.get('arch') or model.get('path')}, {plan['model']['num_params']:,} parameters",
        _base_line(model),
        f"- context: {recipe['data']['seq_len']} tokens; tokenizer: {recipe['data']['tokenizer']['kind']}, {data['vocab_size']:,} ids",
        "",
        "## Training",
        f"- data: {source}; {data['train_tokens']:,} training tokens, {data['val_tokens']:,} held out"
        + (f"; {len(data.get('canaries', []))} canaries inserted" if data.get("canaries") else ""),
        f"- {report['step']} steps of {plan['batch']['tokens_per_step']:,} tokens ({report['step'] * plan['batch']['tokens_per_step']:,} tokens)",
        f"- {plan['backend']} on {plan['topology']['world_size']} process(es), {plan['topology']['device']}, {train['precision']}",
        f"- recipe hash {report['recipe_hash']}; checkpoint content {report['checkpoint_hash']}",
    ]
    if summary:
        lines.append(f"- final training loss {summary['final_loss']:.4f}, wall {summary['wall_s']:.0f} s, {summary['restarts']} restart(s)")
    lines += ["", "## Energy and carbon"]
    if bill:
        t = bill["totals"]
        lines.append(f"- {t['kwh']:.6g} kWh IT (measured {t['measured_kwh']:.6g}, estimated {t['estimated_kwh']:.6g}; "
                     f"counter coverage {t['coverage']:.0%}), x PUE {t['pue']:g} = {t['facility_kwh']:.6g} kWh")
        lines.append(f"- {t['kgco2e']:.6g} kgCO2e at {t['intensity']['g_per_kwh']:.1f} g/kWh ({t['intensity']['source']})")
    else:
        lines.append("- not measured (energy.enabled was false)")
    lines += ["", "## Gates", "", "| gate | required | status | value | limit | evidence |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        limit = "" if r["threshold"] is None else f"{r['threshold']:.4g}"
        lines.append(f"| {r['name']} | {'yes' if r['required'] else 'no'} | {r['status']} | {value} | {limit} | {r['summary']} |")
    lines += [
        "",
        "## Limitations",
        "- The gates test what they test: a few prompts, canaries and probe pairs; passing them is not proof of safety.",
        "- Quality is measured on this run's own held-out split, not on an external benchmark.",
        "- Energy figures marked estimated are models of power (TDP and load, W per GiB), not measurements.",
        "",
        "Files: see `release.json` (sha256 of every file), `gates.json`, `energy.json`, `recipe.yaml`, `data.json`.",
    ]
    return "\n".join(lines) + "\n"
