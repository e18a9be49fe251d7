"""Text as word n-grams, the unit contamination is measured in (GPT-3, PaLM): by the release's
contamination gate, and by preparation when it removes evaluation text from the training data.
Words, not tokens, so the verdict is the same whichever tokenizer a run uses."""

from __future__ import annotations

import io
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.data.files import first_line, open_regular, shown
from orchestrator.errors import DataError

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
    """jsonl: the string fields of a row are one item; any other file: paragraphs separated by blank
    lines. A regular file only (a FIFO would block preparation and the gate forever); a line that is
    no JSON is one line naming the file and the line."""
    with open_regular(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace").read()
    if path.suffix != ".jsonl":
        return EvaluationSet(str(path), [p for p in re.split(r"\n\s*\n", text) if p.strip()])
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{shown(path)}: line {number} is not JSON ({getattr(exc, 'msg', 'nested too deeply')})") from None
        items.append(" ".join(v for v in row.values() if isinstance(v, str)) if isinstance(row, dict) else str(row))
    return EvaluationSet(str(path), items)


def eval_file_problem(path: Path, limit: int = 2**20) -> str | None:
    """What validation can tell of an evaluation file from its first `limit` bytes: that it is a
    regular file and, for jsonl, that its first row is JSON."""
    try:
        if path.suffix != ".jsonl":
            open_regular(path).close()
            return None
        line = first_line(path, limit)
        if line:
            json.loads(line)
    except DataError as exc:
        return str(exc)
    except (ValueError, RecursionError) as exc:
        return f"{shown(path)}: its first row is not JSON ({getattr(exc, 'msg', 'nested too deeply')})"
    return None
