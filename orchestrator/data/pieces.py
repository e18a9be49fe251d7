"""Long documents in pieces, so that no step of preparation works on more than `PIECE_CHARS` at once.

A book-length document tokenized whole costs about a hundred times its size in the tokenizer
(a 40 MB text file reached 10 GB resident and ended in an allocation abort); MinHash shingles and
word n-grams of it cost as much again. Preparation still reads, curates and keeps each document
whole (every curation decision is per document), but tokenizes, trains the tokenizer on, hashes
and fingerprints it a piece at a time.

A piece ends just before a space that follows a non-space character. The byte-level BPE that
preparation trains (GPT-2's pre-tokenizer regex) never puts a non-space and a following space in
one pre-token, and BPE merges never cross pre-tokens, so the ids of the pieces, concatenated, are
the ids of the whole document; so they are with the pretrained families that split at spaces (GPT-2
with a prefix space, Llama 3-style regex splits, Metaspace, BERT: `tests/unit/test_large_documents.py`).
The ids may differ in two places only: a stretch of more than `PIECE_CHARS` characters with no
such space (no prose has one) is cut at `PIECE_CHARS` characters; and a pretrained tokenizer whose
normalizer prepends a marker to every input (SentencePiece conversions: Llama 2, Mistral) puts one
more marker at each cut.
"""

from __future__ import annotations

import re
from typing import Iterator

PIECE_CHARS = 2**16
"""The longest piece, in characters: the one bound on what any preparation step takes at once. The
tokenizer needs some 400 bytes a character of the text it encodes at once (measured: 450 MiB for a
piece of 1 Mi characters, 25 MiB at this bound), and encoding in pieces of this size was no slower."""


def pieces(text: str, limit: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of at most `limit` characters, joined they are `text`; a text
    no longer than `limit` is its only piece."""
    start = 0
    while len(text) - start > limit:
        end = _cut(text, start, start + limit)
        yield text[start:end]
        start = end
    yield text[start:]


_LAST_CUT = re.compile(r".*\S(?= )", re.DOTALL)
"""From a piece's start, as far as the last non-space followed by a space (backtracking from the end, in C)."""


def _cut(text: str, start: int, end: int) -> int:
    """The last position in (start, end] just before a space that follows a non-space, else `end`."""
    found = _LAST_CUT.match(text, start, end + 1)
    return found.end() if found else end
