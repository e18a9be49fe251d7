"""Deterministic data-parallel sharding of packed sequences, with a resumable position.

The stream is a function of one number, `consumed_samples`: global sample position p is
sequence `perm_e[p mod N]` of epoch e = p div N, with a fresh seeded permutation per epoch.
Optimizer step s covers positions [s*G, (s+1)*G) of the global batch G; inside it, micro-step k
of rank r reads the m positions starting at s*G + k*m*W + r*m. So ranks read disjoint parts,
together they cover every position, and the position survives a change of world size as long
as the global batch stays the same (Megatron's sampler works the same way).

A mixture of sources keeps that contract: position p first picks its source, then that source's
own position, and the source's own seeded permutation per epoch of its sequences gives the
sequence. Sources are assigned in blocks of `MIX_BLOCK` positions: every block holds each source's
share of the weights (rounded on the running counts, so they stay within a sequence or so of the
weights however long the run), in a seeded order, so any step's share is a draw from its block (hypergeometric, tighter
than independent draws) and a source's position is its count in the blocks before plus its rank
within this one: a function of p alone. A single source is the one-source case of the same
mapping, position for position.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, model_serializer


@dataclass
class PackedSequences:
    """Fixed-length windows over a flat token array (documents joined by end-of-text)."""

    tokens: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def rows(self, indices: np.ndarray) -> np.ndarray:
        starts = indices * self.seq_len
        return np.stack([np.asarray(self.tokens[s : s + self.seq_len], dtype=np.int64) for s in starts])


@dataclass
class InstructionRows:
    """Prepared instruction rows; `rows` gives a batch as the arrays the model takes (see runtime.batch)."""

    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.asarray(array[np.asarray(indices)], dtype=np.int64) for name, array in self.arrays.items()}


@dataclass
class MixedSequences:
    """Each source's windows in turn: sequence id `offsets[s] + i` is window i of source s."""

    parts: list[PackedSequences]

    def __post_init__(self):
        self.sizes = [len(p) for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return sum(self.sizes)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        sources = np.searchsorted(self.offsets, indices, side="right") - 1
        return np.stack([self.parts[s].rows(np.array([i - self.offsets[s]]))[0] for s, i in zip(sources.tolist(), np.asarray(indices).tolist())])


def open_split(data, split: str, seq_len: int) -> MixedSequences | InstructionRows:
    """The rows of a prepared split: windows over each source's text, or packed instruction examples."""
    if data.kind == "instruction":
        return InstructionRows(data.instruction_rows(split))
    return MixedSequences([PackedSequences(tokens, seq_len) for tokens in data.source_tokens(split)])


def open_stream(rows: MixedSequences | InstructionRows, data, micro_batch_size: int, accumulation_steps: int, world_size: int,
                rank: int, seed: int) -> "ShardedStream":
    """The training stream over a split's rows: a mixture by the sources' weights, or one sequence space."""
    if isinstance(rows, MixedSequences) and len(rows.parts) > 1:
        return ShardedStream(rows.sizes, micro_batch_size, accumulation_steps, world_size, rank, seed, weights=data.weights)
    return ShardedStream(len(rows), micro_batch_size, accumulation_steps, world_size, rank, seed)


MIX_BLOCK = 1024
"""Positions per block of a mixture's source assignment."""


@dataclass
class Mixture:
    """Which source each global sample position reads, and its position within that source."""

    weights: tuple[float, ...]
    seed: int
    _block: tuple[int, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self):
        total = sum(self.weights)
        self.weights = tuple(w / total for w in self.weights)
        self._holder = int(np.argmax(self.weights))  # takes what rounding leaves, so no count ever falls

    def before(self, block: int) -> np.ndarray:
        """Each source's positions in the blocks before `block`."""
        counts = np.floor(np.array(self.weights) * MIX_BLOCK * block + 0.5).astype(np.int64)
        counts[self._holder] = 0
        counts[self._holder] = MIX_BLOCK * block - counts.sum()
        return counts

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, position within the source) of each global position."""
        sources, local = np.empty(len(positions), np.int64), np.empty(len(positions), np.int64)
        for i, p in enumerate(positions.tolist()):
            block, j = divmod(p, MIX_BLOCK)
            labels, local_positions = self._labels(block)
            sources[i], local[i] = labels[j], local_positions[j]
        return sources, local

    def _labels(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The block's source per position and each position's place within its source (kept for the
        block in use: a step reads consecutive positions)."""
        if self._block is None or self._block[0] != block:
            before = self.before(block)
            counts = self.before(block + 1) - before
            labels = np.random.default_rng([self.seed, 0x313C, block]).permutation(np.repeat(np.arange(len(counts)), counts))
            local = np.empty(MIX_BLOCK, np.int64)
            for source in range(len(counts)):
                where = labels == source
                local[where] = before[source] + np.arange(where.sum())
            self._block = (block, labels, local)
        return self._block[1], self._block[2]

    def fingerprint(self) -> int:
        """What a saved data position must match, besides the seed and the sequence counts."""
        return int.from_bytes(hashlib.sha256(repr(self.weights).encode()).digest()[:6], "big")


class StreamPosition(BaseModel):
    """Where a stream is, as each rank's checkpoint state holds it: the global samples consumed, and
    what identifies the data they index (seed, sequence count, a mixture's weights and sizes), so a
    position is never applied to other data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consumed_samples: int
    seed: int
    num_sequences: int
    mixture: int | None = None
    """A mixture's fingerprint; absent for one source."""

    @model_serializer(mode="wrap")
    def _without_absent_mixture(self, handler) -> dict:
        content = handler(self)
        return content if self.mixture is not None else {k: v for k, v in content.items() if k != "mixture"}


@dataclass
class ShardedStream:
    """`num_sequences` is a list of each source's sequence count for a mixture (with `weights`)."""

    num_sequences: int | list[int]
    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    rank: int
    seed: int
    consumed_samples: int = 0
    weights: list[float] | None = None
    _perms: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.sources = [self.num_sequences] if isinstance(self.num_sequences, int) else list(self.num_sequences)
        self.mixture = Mixture(tuple(self.weights), self.seed) if len(self.sources) > 1 else None
        self.offsets = np.concatenate([[0], np.cumsum(self.sources)[:-1]]).astype(np.int64)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps * self.world_size

    def step_indices(self) -> list[np.ndarray]:
        """This rank's micro-batches (sequence indices) for the next optimizer step; advances the stream."""
        m, base = self.micro_batch_size, self.consumed_samples
        micro = [
            self._sequences(base + k * m * self.world_size + self.rank * m, m) for k in range(self.accumulation_steps)
        ]
        self.consumed_samples += self.global_batch_size
        return micro

    def state_dict(self) -> StreamPosition:
        mixture = self.mixture.fingerprint() ^ self._sizes_fingerprint() if self.mixture else None
        return StreamPosition(consumed_samples=self.consumed_samples, seed=self.seed, num_sequences=sum(self.sources), mixture=mixture)

    def load_state_dict(self, position: StreamPosition) -> None:
        if position.model_copy(update={"consumed_samples": self.consumed_samples}) != self.state_dict():
            raise ValueError("the saved data position belongs to other data (seed, sequence counts or mixture weights differ)")
        self.consumed_samples = position.consumed_samples

    def last_step_sources(self) -> list[int] | None:
        """A mixture's samples per source in the whole global batch just taken (every rank's), or None."""
        if self.mixture is None:
            return None
        sources, _ = self.mixture.locate(np.arange(self.consumed_samples - self.global_batch_size, self.consumed_samples))
        return np.bincount(sources, minlength=len(self.sources)).tolist()

    def sources_of(self, sequences: np.ndarray) -> np.ndarray:
        """The source index of each sequence this stream returned."""
        return np.searchsorted(self.offsets, sequences, side="right") - 1

    def _sequences(self, start: int, count: int) -> np.ndarray:
        """Sequence ids in the sources' concatenation (source s's sequences start at offsets[s])."""
        positions = np.arange(start, start + count)
        sources, local = self.mixture.locate(positions) if self.mixture else (np.zeros(count, np.int64), positions)
        ids = []
        for source, k in zip(sources.tolist(), local.tolist()):
            epoch, offset = divmod(k, self.sources[source])
            ids.append(self.offsets[source] + self._perm(source, epoch)[offset])
        return np.array(ids, dtype=np.int64)

    def _perm(self, source: int, epoch: int) -> np.ndarray:
        """The source's order in `epoch` (the latest one kept per source). Source 0 draws as a
        single-source stream always has, so one source reads as before mixtures existed."""
        if self._perms.get(source, (None,))[0] != epoch:
            key = [self.seed, epoch] + ([source] if source else [])
            self._perms[source] = (epoch, np.random.default_rng(key).permutation(self.sources[source]))
        return self._perms[source][1]

    def _sizes_fingerprint(self) -> int:
        return int.from_bytes(hashlib.sha256(repr(self.sources).encode()).digest()[:6], "big")


def validation_indices(num_sequences: int, count_per_rank: int, world_size: int, rank: int) -> np.ndarray:
    """A fixed, disjoint slice of validation sequences per rank, the same at every evaluation."""
    available = num_sequences // world_size
    return np.arange(rank, world_size * min(count_per_rank, max(1, available)), world_size) % num_sequences
