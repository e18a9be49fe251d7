"""Long documents in pieces, so that no step of preparation works on more than `PIECE_CHARS` at once.

A book-length document tokenized whole costs about a hundred times its size in the tokenizer
(a 40 MB text file reached 10 GB resident and ended in an allocation abort); MinHash shingles and
word n-grams of it cost as much again. Preparation still reads, curates and keeps each document
whole (every curation decision is per document), but tokenizes, trains the tokenizer on, hashes
and fingerprints it a piece at a time.

A piece ends just before a space that follows a non-space character. The byte-level BPE that
preparation trains (GPT-2's pre-tokenizer regex) never puts a non-space and a following space in
one pre-token, and BPE merges never cross pre-tokens, so the ids of the pieces, concatenated, are
the ids of the whole document. A stretch of more than `PIECE_CHARS` characters with no such space
(no English text has one) is cut at `PIECE_CHARS` characters; only there may the ids differ.
"""

from __future__ import annotations

import re
from typing import Iterator

PIECE_CHARS = 2**16
"""The longest piece, in characters: the one bound on what any preparation step takes at once."""


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
