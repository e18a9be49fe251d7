"""Evaluation data that the model saw in training: the share of the evaluation split's token
n-grams (13 by default, as in GPT-3's contamination study) that also occur in the training split."""

from __future__ import annotations

import numpy as np

from orchestrator.gates.result import GateResult, judge
from orchestrator.gates.spec import ContaminationGate

HASH_BASE = np.uint64(1_000_003)


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every n-gram, vectorised (wrapping uint64 arithmetic)."""
    tokens = np.asarray(tokens, dtype=np.uint64)
    count = len(tokens) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            hashes = hashes * HASH_BASE + tokens[offset : offset + count] + np.uint64(1)
    return hashes


def overlap(eval_tokens: np.ndarray, train_tokens: np.ndarray, n: int) -> tuple[float, int]:
    """(share of the evaluation n-grams found in training, how many were tested)."""
    evaluated = ngram_hashes(eval_tokens, n)
    if not len(evaluated):
        return 0.0, 0
    seen = np.unique(ngram_hashes(train_tokens, n))
    return float(np.isin(evaluated, seen, assume_unique=False).mean()), len(evaluated)


def contamination_gate(spec: ContaminationGate, eval_tokens: np.ndarray, train_tokens: np.ndarray, warn_margin: float) -> GateResult:
    share, tested = overlap(eval_tokens, train_tokens, spec.ngram)
    status = judge(share, spec.max_overlap, warn_margin)
    summary = f"{share:.1%} of {tested:,} evaluation {spec.ngram}-grams occur in the training data (limit {spec.max_overlap:.0%})"
    return GateResult("contamination", status, share, spec.max_overlap, summary,
                      {"ngram": spec.ngram, "evaluation_ngrams": tested, "train_tokens": int(len(train_tokens))})
