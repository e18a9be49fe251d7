"""Token shard files: what preparation writes and what ranks memory-map.

A shard is `NAME.bin` (token ids, documents each ended by the end-of-text id, in the manifest's
dtype) and `NAME.idx` (int64: the end offset of each document within the shard). A split of a
source is its shards in name order; `TokenShards` reads them as one flat array without loading
them, so a rank's memory holds the windows it reads, never the corpus.
"""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path
from typing import Iterator

import numpy as np


def write_shard(path: Path, documents: list[np.ndarray], dtype: str) -> int:
    """One shard from tokenized documents (each already ended by end-of-text); returns its token count."""
    ends = np.cumsum([len(d) for d in documents], dtype=np.int64)
    tokens = np.concatenate(documents).astype(dtype, copy=False) if documents else np.zeros(0, dtype)
    tokens.tofile(path.with_suffix(".bin"))
    ends.tofile(path.with_suffix(".idx"))
    return int(len(tokens))


class TokenShards:
    """Shards as one flat, read-only token array: `len`, slices, and documents."""

    def __init__(self, paths: list[Path], dtype: str):
        self.paths = paths
        self.dtype = np.dtype(dtype)
        sizes = [p.with_suffix(".bin").stat().st_size // self.dtype.itemsize for p in paths]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, step = item.indices(len(self))
        if step != 1:
            raise IndexError("token shards are read in contiguous slices")
        pieces = []
        while start < stop:
            shard = bisect_right(self.starts, start) - 1
            end = min(stop, self.starts[shard + 1])
            pieces.append(self._map(shard)[start - self.starts[shard] : end - self.starts[shard]])
            start = end
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)

    def documents(self, max_tokens: int | None = None) -> Iterator[np.ndarray]:
        """Each document's tokens without its end-of-text id (pieces of at most `max_tokens`), in order."""
        for shard, path in enumerate(self.paths):
            tokens, begin = self._map(shard), 0
            for end in np.fromfile(path.with_suffix(".idx"), dtype=np.int64).tolist():
                body = end - 1  # the end-of-text id closes every document
                step = max_tokens or max(1, body - begin)
                for piece in range(begin, body, step):
                    yield tokens[piece : min(body, piece + step)]
                begin = end

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            path = self.paths[shard].with_suffix(".bin")
            self._maps[shard] = np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.zeros(0, self.dtype)
        return self._maps[shard]
