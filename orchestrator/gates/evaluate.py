"""`orch gate RUN_DIR [--checkpoint N]`: every gate of the recipe on one verified checkpoint.

The checkpoint is consolidated in this process whatever its layout (ZeRO shards, Horovod state),
so gates see the model a release would ship. Results go to `gates/<checkpoint>.json`, keyed by
the checkpoint's content hash: a release checks that hash, not the name.
"""

from __future__ import annotations

import math
import time
from itertools import islice
from pathlib import Path

import numpy as np

from orchestrator.shared.checkpoint import store
from orchestrator.errors import DataError, GateError
from orchestrator.gates.content import content_gate
from orchestrator.data.ngrams import EvaluationSet, read_eval_file
from orchestrator.gates.contamination import contamination_gate, decoded_texts
from orchestrator.gates.downstream import downstream_gate, texts_by_task
from orchestrator.gates.extraction import probe_generations, training_prefixes
from orchestrator.gates.health import health_gate
from orchestrator.gates.memorisation import memorisation_gate
from orchestrator.gates.quality import bias_gate, quality_gate, read_pairs
from orchestrator.gates.outcome import GateReport, passes
from orchestrator.gates.result import GateResult, judge, skipped
from orchestrator.gates.robustness import robustness_gate
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir, rank_state_owner
from orchestrator.rundir.records import read_data, read_plan, read_recipe
from orchestrator.rundir.metric_rows import MetricRow, parse_metric_row

def evaluate_gates(run_dir: Path, step: int | None = None) -> GateReport:
    from orchestrator.checkpoint.export import choose_checkpoint, load_checkpoint_model
    from orchestrator.checkpoint.listing import checkpoint_root
    from orchestrator.shared.data.stream import open_split

    run = RunDir(run_dir)
    checkpoint = choose_checkpoint(checkpoint_root(run.path), step)
    manifest = store.read_manifest(checkpoint)
    recipe = read_recipe(run)
    spec, margin = recipe.gates, recipe.gates.warn_margin
    data = read_data(run).prepared
    train, val = data.tokens("train"), data.tokens("val")
    model, tokenizer = load_checkpoint_model(run.path, checkpoint)
    held_out = open_split(data, "val", recipe.data.seq_len)
    val_rows = held_out.rows(np.arange(min(spec.quality.eval_sequences, len(held_out))))

    prefixes = training_prefixes(model, train, spec.memorisation, tokenizer.eos_token_id)
    results = [
        quality_gate(spec.quality, model, tokenizer, val_rows, margin),
        health_gate(spec.health, _metrics_at(run, checkpoint, manifest.step), manifest.world_size,
                    sum(rank_state_owner(name) is not None for name in manifest.files)),
        memorisation_gate(spec.memorisation, model, tokenizer, [*spec.memorisation.canaries, *data.manifest.canaries], prefixes, margin),
        contamination_gate(spec.contamination, _evaluation_sets(spec), decoded_texts(train, tokenizer), margin),
        content_gate(spec.content, probe_generations(model, tokenizer, prefixes, spec.content)),
        bias_gate(spec.bias, _pairs(spec.bias.pairs), model, tokenizer, margin) if spec.bias.pairs else
        skipped("bias", "no pairs file (gates.bias.pairs)"),
        downstream_gate(spec.evaluation, model, tokenizer, margin) if spec.evaluation.tasks else
        skipped("evaluation", "no downstream tasks (gates.evaluation.tasks)"),
        robustness_gate(spec.robustness, model, tokenizer, _held_out_texts(val, tokenizer, spec.robustness.texts), margin),
        _budget_gate(run, recipe, margin),
    ]
    required = set(spec.required) if spec.required is not None else {r.name for r in results if r.status != "skipped"}
    report = GateReport.judge(
        results, required, checkpoint=checkpoint.name, step=manifest.step, checkpoint_hash=store.content_hash(manifest),
        recipe_hash=manifest.recipe_hash, evaluated_at=time.time(),
    )
    report.write(run)
    _mirror(run, recipe, report)
    return report


def _mirror(run: RunDir, recipe, report: GateReport) -> None:
    """Gate values to the run's dashboards, at the checkpoint's step."""
    from orchestrator.shared.tracking.mirror import mirror_once, run_config

    metrics = {f"gates/{r.name}/passed": float(passes(r.status)) for r in report.results if r.status != "skipped"}
    metrics.update({f"gates/{r.name}/value": r.value for r in report.results if r.value is not None and math.isfinite(r.value)})
    scores = next((r.scores for r in report.results if r.name == "evaluation"), {})
    for task, score in scores.items():  # a task's score, or {metric: score} for a task listed with several metrics
        named = score if isinstance(score, dict) else {"": score}
        metrics.update({f"gates/evaluation/{task}" + (f"/{metric}" if metric else ""): value for metric, value in named.items()})
    metrics["gates/passed"] = float(report.passed)
    config = run_config(recipe.model_dump(mode="json"), read_plan(run))
    mirror_once(run.path, recipe.tracking, recipe.name, config, metrics, report.step)


def _pairs(path: Path) -> list[tuple[str, str]]:
    try:
        pairs = read_pairs(path)
    except (OSError, ValueError) as exc:
        raise GateError(f"gates.bias.pairs: {exc}") from None
    if not pairs:
        raise GateError(f"gates.bias.pairs: {path} has no pairs")
    return pairs


def _metrics_at(run: RunDir, checkpoint: Path, step: int) -> list[MetricRow]:
    """The metrics the checkpoint itself carries (its history exactly), else the run's up to its step."""
    saved = checkpoint / run.metrics.name
    rows = events.read(saved, parse_metric_row) if saved.exists() else run.metric_rows()
    return [row for row in rows if row["step"] <= step]


def _evaluation_sets(spec) -> list[EvaluationSet]:
    """What the contamination gate checks: every evaluation set the gates use."""
    sets = [EvaluationSet(f"task {name}", texts) for name, texts in texts_by_task(spec.evaluation).items()]
    if spec.bias.pairs:
        sets.append(EvaluationSet(f"bias pairs {spec.bias.pairs}", [text for pair in _pairs(spec.bias.pairs) for text in pair]))
    for path in spec.contamination.eval_files:
        try:
            sets.append(read_eval_file(path))
        except DataError as exc:  # it names the file: missing, not a regular file, a line that is no JSON
            raise GateError(f"gates.contamination.eval_files: {exc}") from None
    return sets


def _held_out_texts(tokens: np.ndarray, tokenizer, count: int) -> list[str]:
    """Held-out text in pieces of at most 128 tokens (a robustness window: 96 of context, 32 of
    continuation), so a split of a few long documents still gives many windows; four times `count`,
    of which the gate keeps the first `count` long enough."""
    return [text for text in islice(decoded_texts(tokens, tokenizer, max_tokens=128), 4 * count) if text.strip()]


def _budget_gate(run: RunDir, recipe, margin: float) -> GateResult:
    energy = recipe.energy
    if not energy.enabled or (energy.budget_kwh is None and energy.budget_kgco2e is None):
        return skipped("budget", "no energy or carbon budget in the recipe (energy.budget_kwh, energy.budget_kgco2e)")
    from orchestrator.shared.energy.bill import bill_for

    totals = bill_for(run.path).totals
    checks = [(totals.facility_kwh, energy.budget_kwh, "kWh"), (totals.kgco2e, energy.budget_kgco2e, "kgCO2e")]
    checks = [(used, budget, unit) for used, budget, unit in checks if budget is not None]
    shares = [used / budget for used, budget, _ in checks]
    status = judge(max(shares), 1.0, margin)
    summary = "; ".join(f"{used:.4g} of {budget:g} {unit}" for used, budget, unit in checks)
    return GateResult("budget", status, max(shares), 1.0, summary + " (value: the largest share of a budget spent)",
                      {"facility_kwh": totals.facility_kwh, "kgco2e": totals.kgco2e})


def render_gate_table(report: GateReport) -> str:
    lines = [f"gates for {report.checkpoint} (content {report.checkpoint_hash[:12]}):",
             f"{'gate':<14} {'status':<8} {'value':>10} {'limit':>10}  evidence"]
    for r in report.results:
        value = "" if r.value is None else f"{r.value:.4g}"
        limit = "" if r.threshold is None else f"{r.threshold:.4g}"
        marker = "" if r.required else " (not required)"
        lines.append(f"{r.name:<14} {r.status.upper():<8} {value:>10} {limit:>10}  {r.summary}{marker}")
    lines.append("PASSED: may be released" if report.passed else f"FAILED: {', '.join(r.name for r in report.failed_required())}")
    return "\n".join(lines)
