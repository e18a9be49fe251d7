"""What preparation removes or rewrites before a document is tokenized, one document at a time.

Per document, in a preparation worker: decontamination (a word n-gram shared with an evaluation
file drops it), quality rules (Gopher's, Rae et al. 2021: too short, mostly repeated lines, a long
run of one character), personal-data redaction (placeholders for e-mail addresses, payment cards
that pass the Luhn check, national id numbers, phone numbers, IP addresses), then the fingerprints
deduplication needs: a hash of the normalised text (exact) and a MinHash signature of its word
5-grams (near). Which documents deduplication drops is decided in one process, in document order
(`Deduplicator`), so the result does not depend on how many workers computed the fingerprints.

The PII patterns are regular expressions in the spirit of datatrove's `PIIFormatter` (which covers
e-mail and IPv4 addresses only), extended to the kinds named above; like any pattern matcher they
miss what they were not written for (names, postal addresses) and are the first line, not the gate:
the release's content gate still probes the trained model.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from orchestrator.data import ngrams
from orchestrator.data.spec import CurationSpec, NearDedupSpec, QualitySpec

PLACEHOLDERS = {"email": "<EMAIL>", "card": "<CARD_NUMBER>", "national_id": "<NATIONAL_ID>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>"}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PATTERNS = {
    "email": re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b"),
    # 13 to 19 digits, optionally grouped by spaces or dashes; a card only with an issuer's prefix and a valid Luhn digit
    "card": re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    # US social security numbers (never area 000, 666 or 9xx, group 00, serial 0000) and UK national insurance numbers
    "national_id": re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b|\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
    # international (+CC ...) or North American ((415) 555-2671, 415-555-2671) numbers
    "phone": re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}|\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"),
    "ip": re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])|(?<![\w:])(?:[0-9A-Fa-f]{{1,4}}:){{7}}[0-9A-Fa-f]{{1,4}}(?![\w:])"
                     r"|(?<![\w:])(?=[0-9A-Fa-f:]*[0-9A-Fa-f]{3})(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])"),
}
"""Applied in this order, each on what the previous ones left (a card number is not also a phone number)."""

SHINGLE = 5


CARD_PREFIX = re.compile(r"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:2[2-9]|[3-6]\d|7[01])\d{13}|2720\d{12}|3[47]\d{13}|6(?:011|5\d\d)\d{12,15}")
"""Lengths and issuer prefixes of Visa, Mastercard, American Express and Discover: digit runs that
pass Luhn by chance (one in ten does) and are constants, not cards, mostly fail this."""
VERSION_CONTEXT = re.compile(r"(?i)(?:version|release|rev|section|rfc|\bv)[\s:=(\"']*$")
"""Before a dotted quad, a version or section number, not an address."""


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(int(c) for c in reversed(digits)):
        total += d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
    return total % 10 == 0


def _is_personal(kind: str, match: re.Match) -> bool:
    """The checks a pattern cannot make: a card's issuer and checksum; an IP address that routes
    on the internet (not loopback, private or documentation ranges) and is not a version number."""
    found = match.group()
    if kind == "card":
        digits = re.sub(r"\D", "", found)
        return bool(CARD_PREFIX.fullmatch(digits)) and luhn_valid(digits)
    if kind == "ip":
        import ipaddress

        try:
            address = ipaddress.ip_address(found)
        except ValueError:
            return False
        return address.is_global and not VERSION_CONTEXT.search(match.string[max(0, match.start() - 24) : match.start()])
    return True


def redact(text: str) -> tuple[str, Counter]:
    """The text with personal data replaced by placeholders, and how many of each kind were replaced."""
    counts: Counter = Counter()
    for kind, pattern in PATTERNS.items():
        def replace(match: re.Match, kind: str = kind) -> str:
            if not _is_personal(kind, match):
                return match.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, counts


def quality_failure(text: str, spec: QualitySpec) -> str | None:
    """Why the document is not text worth training on, or None."""
    if len(text) < spec.min_chars:
        return "too_short"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and 1 - len(set(lines)) / len(lines) > spec.max_duplicate_line_fraction:
        return "duplicate_lines"
    if re.search(r"(.)\1{%d,}" % spec.max_char_run, text, flags=re.DOTALL):
        return "char_run"
    return None


def exact_key(text: str) -> bytes:
    """Documents equal up to case, Unicode form and whitespace share this key."""
    import xxhash

    return xxhash.xxh3_128_digest(" ".join(unicodedata.normalize("NFKC", text).lower().split()).encode())


def minhash(text: str, spec: NearDedupSpec):
    """A datasketch `LeanMinHash` of the document's word 5-grams (the whole text when shorter)."""
    from datasketch import LeanMinHash, MinHash

    words = ngrams.words(text)
    shingles = {" ".join(words[i : i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))}
    signature = MinHash(num_perm=spec.num_perm, seed=1)
    signature.update_batch([s.encode() for s in shingles])
    return LeanMinHash(signature)


@dataclass
class Curated:
    """One chunk's documents after the per-document steps: the texts kept and their fingerprints."""

    texts: list[str]
    keys: list[bytes]
    signatures: list
    counts: Counter = field(default_factory=Counter)


def curate(texts: list[str], spec: CurationSpec, contamination: "Contamination | None") -> Curated:
    """The per-document steps over one chunk, in a worker: pure, so any worker gives the same result."""
    out = Curated([], [], [])
    for text in texts:
        out.counts["read"] += 1
        if contamination is not None and contamination.found_in(text):
            out.counts["decontaminated"] += 1
            continue
        reason = quality_failure(text, spec.quality) if spec.quality else None
        if reason:
            out.counts[f"quality_{reason}"] += 1
            continue
        if spec.redact_pii:
            text, found = redact(text)
            out.counts.update({f"pii_{kind}": n for kind, n in found.items()})
            out.counts["pii_documents"] += bool(found)
        out.texts.append(text)
        out.keys.append(exact_key(text) if spec.exact_dedup else b"")
        out.signatures.append(minhash(text, spec.near_dedup) if spec.near_dedup else None)
    return out


@dataclass
class Contamination:
    """The evaluation files' word n-grams (per n), which a training document must not share."""

    needles: dict[int, np.ndarray]

    def found_in(self, text: str) -> bool:
        ids = ngrams.word_ids(text)
        return any(np.isin(ngrams.ngram_hashes(ids, n), hashes).any() for n, hashes in self.needles.items())


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
