"""Text as word n-grams, the unit contamination is measured in (GPT-3, PaLM): by the release's
contamination gate, and by preparation when it removes evaluation text from the training data.
Words, not tokens, so the verdict is the same whichever tokenizer a run uses."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HASH_BASE = np.uint64(1_000_003)
MIN_NGRAM = 8
WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class EvaluationSet:
    name: str
    items: list[str]


def words(text: str) -> list[str]:
    return WORD.findall(unicodedata.normalize("NFKC", text).lower())


def word_ids(text: str) -> np.ndarray:
    import xxhash

    return np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words(text)), dtype=np.uint64)


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every n-gram of ids, vectorised (wrapping uint64 arithmetic)."""
    ids = np.asarray(ids, dtype=np.uint64)
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            hashes = hashes * HASH_BASE + ids[offset : offset + count] + np.uint64(1)
    return hashes


def set_ngram(items: list[str], ngram: int) -> int:
    lengths = [len(words(item)) for item in items]
    return int(min(ngram, max(MIN_NGRAM, np.percentile(lengths, 5)))) if lengths else ngram


def read_eval_file(path: Path) -> EvaluationSet:
    """jsonl: the string fields of a row are one item; any other file: paragraphs separated by blank lines."""
    text = path.read_text(errors="replace")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        items = [" ".join(v for v in row.values() if isinstance(v, str)) if isinstance(row, dict) else str(row) for row in rows]
    else:
        items = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return EvaluationSet(str(path), items)
