"""Memorisation: canary exposure and verbatim regurgitation of training text.

Exposure follows Carlini et al. (2019): a canary's secret (its digits) is redrawn `candidates`
times; the canary's rank r by likelihood among them gives exposure = log2(candidates + 1) -
log2(r). A model that has not memorised the canary ranks it anywhere (exposure near 1 bit); one
that has ranks it first (the maximum, about 10 bits for 1,000 candidates).
"""

from __future__ import annotations

import math
import re

import numpy as np

from orchestrator.gates.result import GateResult, judge
from orchestrator.gates.extraction import TrainingPrefix
from orchestrator.gates.scoring import batched_text_losses
from orchestrator.gates.spec import MemorisationGate


def redraw_digits(canary: str, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    candidates = set()
    while len(candidates) < count:
        candidate = re.sub(r"\d", lambda _: str(rng.integers(10)), canary)
        if candidate != canary:
            candidates.add(candidate)
    return sorted(candidates)


def exposure(model, tokenizer, canary: str, candidates: int, seed: int = 0) -> dict:
    others = redraw_digits(canary, candidates, seed)
    losses = batched_text_losses(model, tokenizer, [canary, *others])
    rank = int((losses[1:] < losses[0]).sum()) + 1
    return {"canary": canary, "rank": rank, "candidates": candidates, "exposure_bits": math.log2(candidates + 1) - math.log2(rank)}


def longest_verbatim(generated: list[int], truth: list[int]) -> int:
    """How many leading tokens of the continuation reproduce the training text exactly."""
    count = 0
    for produced, expected in zip(generated, truth):
        if produced != expected:
            break
        count += 1
    return count


def memorisation_gate(spec: MemorisationGate, model, tokenizer, canaries: list[str], prefixes: list[TrainingPrefix], warn_margin: float) -> GateResult:
    exposures = [exposure(model, tokenizer, canary, spec.candidates) for canary in canaries]
    spans = [{"offset": p.offset, "verbatim_tokens": longest_verbatim(p.greedy, p.truth)} for p in prefixes]
    worst_exposure = max((e["exposure_bits"] for e in exposures), default=0.0)
    worst_span = max((s["verbatim_tokens"] for s in spans), default=0)
    statuses = [judge(worst_exposure, spec.max_exposure_bits, warn_margin), judge(worst_span, spec.max_verbatim_tokens, warn_margin)]
    status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    parts = []
    if exposures:
        exposed = [e for e in exposures if e["exposure_bits"] > spec.max_exposure_bits]
        parts.append(f"canary exposure up to {worst_exposure:.1f} bits (limit {spec.max_exposure_bits:g}; "
                     f"{len(exposed)} of {len(exposures)} canaries over)")
    else:
        parts.append("no canaries to test")
    parts.append(f"longest verbatim continuation {worst_span} tokens of {spec.continuation_tokens} from {len(spans)} training prefixes "
                 f"(limit {spec.max_verbatim_tokens})")
    return GateResult("memorisation", status, worst_exposure, spec.max_exposure_bits, "; ".join(parts),
                      {"canaries": exposures, "regurgitation": spans, "longest_verbatim_tokens": worst_span})
