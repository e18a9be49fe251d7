"""What preparation removes or rewrites before a document is tokenized, one document at a time.

Per document, in a preparation worker: decontamination (a word n-gram shared with an evaluation
file drops it), quality rules (Gopher's, Rae et al. 2021: too short, mostly repeated lines, a long
run of one character), personal-data redaction (`pii`: placeholders for e-mail addresses, payment
cards, national id numbers, phone numbers, IP addresses), then the fingerprints deduplication needs:
a hash of the normalised text (exact) and a MinHash signature of its word 5-grams (near). Which
documents deduplication drops is decided in one process, in document order (`Deduplicator`), so the
result does not depend on how many workers computed the fingerprints.

Redaction and the character-run rule read a document whole (a regular expression over the string);
decontamination, the exact key and the MinHash signature read it a piece at a time (`pieces`: cut
before a space, so no word and no n-gram is lost at a cut, and each gives what the whole document
gives), and the duplicate-line rule a block of lines at a time, keeping a hash of each line. So a
book-length document costs a few times its size, not a hundred. Every decision is still one per
document.

Redaction is the first line, not the gate: the release's content gate still probes the trained
model, with the same detector.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from orchestrator.data import ngrams
from orchestrator.data.pieces import PIECE_CHARS, pieces
from orchestrator.data.pii import redact
from orchestrator.data.spec import CurationSpec, NearDedupSpec, QualitySpec

SHINGLE = 5
MINHASH_BATCH = 4096
"""Shingles hashed at once: datasketch holds a shingles x permutations matrix (4 MiB here, not gigabytes)."""


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
"""What `str.splitlines` ends a line at."""


def quality_failure(text: str, spec: QualitySpec, piece_chars: int = PIECE_CHARS) -> str | None:
    """Why the document is not text worth training on, or None."""
    if len(text) < spec.min_chars:
        return "too_short"
    lines = line_hashes(text, piece_chars)
    if len(lines) and 1 - len(np.unique(lines)) / len(lines) > spec.max_duplicate_line_fraction:
        return "duplicate_lines"
    # Only from the first character of a run (the lookbehind), so that a run just short of the limit is read once,
    # not once from each of its characters; and only as far as the limit, not to the end of a longer run.
    if re.search(r"(.)(?<!\1\1)\1{%d}" % spec.max_char_run, text, flags=re.DOTALL):
        return "char_run"
    return None


def line_hashes(text: str, piece_chars: int = PIECE_CHARS) -> np.ndarray:
    """A hash of each non-blank line, stripped, in order: 8 bytes a line, where a list of the lines
    held ten times the size of a document of short lines. Read a block of about `piece_chars` at a
    time, cut after a newline where there is one; a line longer than a block is joined once, whole.
    (Python's string hash: salted per process, but only compared within one document.)"""
    hashes: list[np.ndarray] = []
    partial: list[str] = []  # the start of a line that goes on in the next block
    start = 0
    while start < len(text):
        end = len(text) if len(text) - start <= piece_chars else (text.rfind("\n", start, start + piece_chars) + 1 or start + piece_chars)
        block, start = text[start:end], end
        lines = block.splitlines()
        if len(lines) == 1 and block[-1] not in LINE_BREAKS:  # no line ends in this block
            partial.append(block)
            continue
        if partial:
            lines[0] = "".join(partial) + lines[0]
            partial.clear()
        if block[-1] not in LINE_BREAKS:
            partial.append(lines.pop())
        hashes.append(np.fromiter((hash(line) for line in map(str.strip, lines) if line), dtype=np.int64))
    last = "".join(partial).strip()
    hashes.append(np.asarray([hash(last)] if last else [], dtype=np.int64))
    return np.concatenate(hashes)


def exact_key(text: str, piece_chars: int = PIECE_CHARS) -> bytes:
    """Documents equal up to case, Unicode form and whitespace share this key: the hash of their
    words joined by single spaces, fed a piece at a time."""
    import xxhash

    hasher, separator = xxhash.xxh3_128(), b""
    for piece in pieces(text, piece_chars):
        words = unicodedata.normalize("NFKC", piece).lower().split()
        if words:
            hasher.update(separator + " ".join(words).encode())
            separator = b" "
    return hasher.digest()


def minhash(text: str, spec: NearDedupSpec, piece_chars: int = PIECE_CHARS):
    """A datasketch `LeanMinHash` of the document's word 5-grams (the whole text when shorter). A
    piece's 5-grams start with the last four words of the one before; a minimum over hashes does not
    depend on how they are batched, nor on a 5-gram hashed twice."""
    from datasketch import LeanMinHash, MinHash

    signature = MinHash(num_perm=spec.num_perm, seed=1)
    words: list[str] = []
    for piece in pieces(text, piece_chars):
        words = words[-(SHINGLE - 1) :] + ngrams.words(piece)
        _hash_into(signature, {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)})
    if len(words) < SHINGLE:  # the whole document is shorter than one 5-gram
        _hash_into(signature, {" ".join(words)})
    return LeanMinHash(signature)


def _hash_into(signature, shingles: set[str]) -> None:
    batch = [s.encode() for s in shingles]
    for start in range(0, len(batch), MINHASH_BATCH):
        signature.update_batch(batch[start : start + MINHASH_BATCH])


@dataclass
class Curated:
    """One chunk's documents after the per-document steps: the texts kept and their fingerprints."""

    texts: list[str]
    keys: list[bytes]
    signatures: list
    counts: Counter = field(default_factory=Counter)


def curate(texts: list[str], spec: CurationSpec, contamination: "Contamination | None", piece_chars: int = PIECE_CHARS) -> Curated:
    """The per-document steps over one chunk, in a worker: pure, so any worker gives the same result."""
    out = Curated([], [], [])
    for text in texts:
        out.counts["read"] += 1
        if contamination is not None and contamination.found_in(text, piece_chars):
            out.counts["decontaminated"] += 1
            continue
        reason = quality_failure(text, spec.quality, piece_chars) if spec.quality else None
        if reason:
            out.counts[f"quality_{reason}"] += 1
            continue
        if spec.redact_pii:
            text, found = redact(text)
            out.counts.update({f"pii_{kind}": n for kind, n in found.items()})
            out.counts["pii_documents"] += bool(found)
        out.texts.append(text)
        out.keys.append(exact_key(text, piece_chars) if spec.exact_dedup else b"")
        out.signatures.append(minhash(text, spec.near_dedup, piece_chars) if spec.near_dedup else None)
    return out


@dataclass
class Contamination:
    """The evaluation files' word n-grams (per n), which a training document must not share."""

    needles: dict[int, np.ndarray]
    """Per n, the sorted unique hashes of the evaluation files' n-grams."""

    def found_in(self, text: str, piece_chars: int = PIECE_CHARS) -> bool:
        """Whether the text shares an n-gram with an evaluation file; read a piece at a time, each
        piece's words after the last n-1 of the piece before, so no n-gram across a cut is missed."""
        carried = max(self.needles) - 1
        ids = np.zeros(0, dtype=np.uint64)
        for piece in pieces(text, piece_chars):
            ids = np.concatenate([ids[max(0, len(ids) - carried) :], ngrams.word_ids(piece)])
            if any(_any_in(ngrams.ngram_hashes(ids, n), hashes) for n, hashes in self.needles.items()):
                return True
        return False


def _any_in(values: np.ndarray, ordered: np.ndarray) -> bool:
    """Whether any of `values` is in `ordered` (sorted, as `np.unique` leaves it): a binary search per
    value, where `np.isin` would sort the needles again for every piece."""
    if not len(ordered):
        return False
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return bool((ordered[at] == values).any())


def contamination_from(paths, ngram: int = 13) -> Contamination | None:
    """Needles from `data.decontaminate` files, split into items as the contamination gate splits them."""
    needles: dict[int, list[np.ndarray]] = {}
    for path in paths:
        items = ngrams.read_eval_file(path).items
        n = ngrams.set_ngram(items, ngram)
        needles.setdefault(n, []).extend(ngrams.ngram_hashes(ngrams.word_ids(item), n) for item in items)
    if not needles:
        return None
    return Contamination({n: np.unique(np.concatenate(parts)) for n, parts in needles.items()})


class Deduplicator:
    """Exact and near-duplicate decisions over a source's documents, in order: the first of each
    group is kept. The exact keys (16 bytes a document) and the LSH index (datasketch's
    `MinHashLSH`, in memory: some kilobytes a document) grow with the number of documents kept."""

    def __init__(self, spec: CurationSpec):
        self.seen: set[bytes] = set()
        self.lsh = None
        if spec.near_dedup:
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=spec.near_dedup.threshold, num_perm=spec.near_dedup.num_perm)
        self.exact = spec.exact_dedup
        self.kept = 0

    def keep(self, keys: list[bytes], signatures: list) -> tuple[np.ndarray, Counter]:
        """Which of a chunk's documents (their exact keys and MinHash signatures) stay, and how many
        of each kind of duplicate went."""
        mask, counts = np.ones(len(keys), dtype=bool), Counter()
        for i, (key, signature) in enumerate(zip(keys, signatures)):
            if self.exact and key in self.seen:
                mask[i] = False
                counts["exact_duplicates"] += 1
                continue
            if self.lsh is not None and self.lsh.query(signature):
                mask[i] = False
                counts["near_duplicates"] += 1
                continue
            if self.exact:
                self.seen.add(key)
            if self.lsh is not None:
                self.lsh.insert(str(self.kept), signature)
            self.kept += 1
        return mask, counts
