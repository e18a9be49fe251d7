"""Held-out quality and the bias probe: both are losses of the checkpoint's model on given text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from orchestrator.data.files import open_regular
from orchestrator.errors import DataError
from orchestrator.gates.result import GateResult, judge
from orchestrator.gates.scoring import row_losses, text_losses
from orchestrator.gates.spec import BiasGate, QualityGate
from orchestrator.shared.model.inputs import Rows, count
from orchestrator.model.remote_code import remote_code_problem


def quality_gate(spec: QualityGate, model, tokenizer, val_rows: Rows, warn_margin: float) -> GateResult:
    loss = float(row_losses(model, val_rows).mean())
    perplexity = math.exp(loss) if loss < 700 else math.inf
    statuses = [judge(loss, spec.max_val_loss, warn_margin), judge(perplexity, spec.max_perplexity, warn_margin)]
    evidence: dict = {"val_loss": loss, "perplexity": perplexity, "sequences": count(val_rows)}
    parts = [f"validation loss {loss:.4f}" + (f" (limit {spec.max_val_loss:g})" if spec.max_val_loss else ""),
             f"perplexity {perplexity:.1f}" + (f" (limit {spec.max_perplexity:g})" if spec.max_perplexity else "")]
    if spec.baseline is not None:
        baseline_loss, problem = _baseline_loss(spec.baseline, tokenizer, val_rows)
        if problem:
            statuses.append("fail")
            parts.append(problem)
        else:
            regression = (loss - baseline_loss) / baseline_loss
            evidence.update(baseline=str(spec.baseline), baseline_val_loss=baseline_loss, regression=regression)
            statuses.append(judge(regression, spec.max_regression, warn_margin) if regression > 0 else "pass")
            parts.append(f"{regression:+.1%} against the baseline's {baseline_loss:.4f} (allowed +{spec.max_regression:.0%})")
    status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    return GateResult("quality", status, loss, spec.max_val_loss, "; ".join(parts), evidence)


def _baseline_loss(baseline: Path, tokenizer, val_rows: Rows) -> tuple[float, str | None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (baseline / "config.json").is_file():
        return 0.0, f"baseline {baseline} is not a model directory (no config.json): give a release or an export"
    if why := remote_code_problem(baseline):
        return 0.0, f"baseline: {why}"
    if AutoTokenizer.from_pretrained(str(baseline), trust_remote_code=False).get_vocab() != tokenizer.get_vocab():
        return 0.0, f"baseline {baseline} has another tokenizer: losses are not comparable"
    model = AutoModelForCausalLM.from_pretrained(str(baseline), trust_remote_code=False).float().eval()
    return float(row_losses(model, val_rows).mean()), None


def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    try:  # checked at validate, and again here: it may have been swapped for a FIFO since
        with open_regular(path) as file:
            text = file.read().decode()
    except DataError as exc:
        raise ValueError(str(exc)) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not {"a", "b"} <= set(row):
            raise ValueError(f"{path}:{number}: each line needs fields `a` and `b`")
        pairs.append((row["a"], row["b"]))
    return pairs


def bias_gate(spec: BiasGate, pairs: list[tuple[str, str]], model, tokenizer, warn_margin: float) -> GateResult:
    a = text_losses(model, tokenizer, [p[0] for p in pairs])
    b = text_losses(model, tokenizer, [p[1] for p in pairs])
    gaps = np.abs(a - b)
    mean_gap = float(gaps.mean())
    worst = sorted(zip(gaps.tolist(), pairs), key=lambda item: -item[0])[:5]
    summary = f"mean per-token loss gap {mean_gap:.3f} nats over {len(pairs)} pairs (limit {spec.max_gap:g}); largest {worst[0][0]:.3f}"
    return GateResult("bias", judge(mean_gap, spec.max_gap, warn_margin), mean_gap, spec.max_gap, summary,
                      {"pairs": len(pairs), "largest_gaps": [{"gap": g, "a": p[0], "b": p[1]} for g, p in worst]})
