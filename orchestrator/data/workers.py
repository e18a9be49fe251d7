"""Preparation's parallel part: chunks of documents curated and tokenized by worker processes.

A chunk (about `data.shard_bytes` of text, cut in reading order) is the unit of work and of output:
what a worker does with it depends on the chunk alone, its files are named by the chunk's index,
and results are taken back in chunk order, so 1 worker and 8 write the same bytes. At most two
chunks per worker are in flight, so memory is bounded by the chunk size, not the corpus. A document
longer than a chunk is still one document of one chunk, but no step takes more of it at once than a
piece (`pieces.PIECE_CHARS`): tokenizing it whole would cost about a hundred times its size.
Workers are spawned (not forked from a process that may hold threads) and tokenize on one thread
each (`TOKENIZERS_PARALLELISM=false`): the parallelism is the workers'.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from orchestrator.data.curate import Contamination, Curated, curate
from orchestrator.data.pieces import PIECE_CHARS, pieces
from orchestrator.shared.data.shards import write_shard
from orchestrator.data.spec import CurationSpec

T = TypeVar("T")
R = TypeVar("R")


def chunks(batches: Iterable[list[str]], chunk_bytes: int) -> Iterator[list[str]]:
    """Documents regrouped into chunks of at least `chunk_bytes` of text (the last may be smaller)."""
    chunk, size = [], 0
    for batch in batches:
        for text in batch:
            chunk.append(text)
            size += len(text)
            if size >= chunk_bytes:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


class Workers:
    """`data.workers` processes, or this process alone for one."""

    def __init__(self, count: int):
        self.count = count
        self.pool: Executor | None = None

    def __enter__(self) -> "Workers":
        if self.count > 1:
            import multiprocessing

            self.pool = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """fn over items, results in the items' order, at most two per worker in flight."""
        if self.pool is None:
            yield from map(fn, items)
            return
        pending: deque = deque()
        for item in items:
            pending.append(self.pool.submit(fn, item))
            if len(pending) >= 2 * self.count:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _worker_start() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@dataclass(frozen=True)
class CurateTask:
    texts: list[str]
    scratch: Path
    spec: CurationSpec
    contamination: Contamination | None
    piece_chars: int = PIECE_CHARS


@dataclass(frozen=True)
class CurateResult:
    """The chunk's fingerprints and counts; its kept texts are in the scratch file, not sent back."""

    keys: list[bytes]
    signatures: list
    sizes: list[int]
    counts: dict[str, int]


def curate_chunk(task: CurateTask) -> CurateResult:
    curated: Curated = curate(task.texts, task.spec, task.contamination, task.piece_chars)
    write_texts(task.scratch, curated.texts)
    return CurateResult(curated.keys, curated.signatures, [len(t) for t in curated.texts], dict(curated.counts))


def write_texts(path: Path, texts: list[str]) -> None:
    """The texts' UTF-8 one after another (one text's bytes in memory at a time, not the chunk's
    twice over) and their end offsets."""
    sizes = []
    with path.with_suffix(".txt").open("wb") as out:
        for text in texts:
            sizes.append(out.write(text.encode("utf-8", errors="replace")))
    np.cumsum(sizes, dtype=np.int64).tofile(path.with_suffix(".off"))


def read_texts(path: Path) -> list[str]:
    data = path.with_suffix(".txt").read_bytes()
    ends = np.fromfile(path.with_suffix(".off"), dtype=np.int64).tolist()
    return [data[a:b].decode("utf-8") for a, b in zip([0, *ends[:-1]], ends)]


@dataclass(frozen=True)
class TokenizeTask:
    scratch: Path
    keep: np.ndarray
    """Per curated document of the chunk: 0 dropped (a duplicate), 1 training, 2 validation."""
    tokenizer: Path
    eos: int
    dtype: str
    out: dict[str, Path]
    """Shard path (without suffix) per split."""
    piece_chars: int = PIECE_CHARS


def tokenize_chunk(task: TokenizeTask) -> dict[str, tuple[int, int]]:
    """Writes the chunk's training and validation shards; (documents, tokens) per split."""
    tokenizer = _tokenizer(task.tokenizer)
    texts = read_texts(task.scratch)
    counts = {}
    for split, code in (("train", 1), ("val", 2)):
        chosen = [t for t, k in zip(texts, task.keep.tolist()) if k == code]
        end = np.asarray([task.eos], dtype=task.dtype)
        documents = [np.concatenate([ids, end]) for ids in token_ids(tokenizer, chosen, task.piece_chars, task.dtype)]
        counts[split] = (len(documents), write_shard(task.out[split], documents, task.dtype))
    return counts


def token_ids(tokenizer, texts: list[str], piece_chars: int = PIECE_CHARS, dtype: str = "int64") -> list[np.ndarray]:
    """Each text's token ids, its pieces encoded in batches of about `piece_chars` characters: the
    same ids as encoding each text whole (see `pieces`), with the tokenizer's working memory bounded
    by the batch instead of by the longest document. In the shard's `dtype` at once: a long
    document's ids are copied a few times on their way to the shard, at 8 bytes a token in int64."""
    parts: list[list[np.ndarray]] = [[] for _ in texts]
    batch: list[str] = []
    owners: list[int] = []

    def encode() -> None:
        for owner, encoding in zip(owners, tokenizer.encode_batch(batch, add_special_tokens=False)):
            parts[owner].append(np.asarray(encoding.ids, dtype=dtype))
        batch.clear()
        owners.clear()

    size = 0
    for owner, text in enumerate(texts):
        for piece in pieces(text, piece_chars):
            batch.append(piece)
            owners.append(owner)
            size += len(piece)
            if size >= piece_chars:
                encode()
                size = 0
    if batch:
        encode()
    return [np.concatenate(p) for p in parts]


_TOKENIZERS: dict[Path, object] = {}


def _tokenizer(directory: Path):
    """The saved fast tokenizer's `tokenizers.Tokenizer`, loaded once per worker."""
    from tokenizers import Tokenizer

    if directory not in _TOKENIZERS:
        _TOKENIZERS[directory] = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return _TOKENIZERS[directory]
