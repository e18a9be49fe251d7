"""Deterministic data-parallel sharding of packed sequences, with a resumable position.

The stream is a function of one number, `consumed_samples`: global sample position p is
sequence `perm_e[p mod N]` of epoch e = p div N, with a fresh seeded permutation per epoch.
Optimizer step s covers positions [s*G, (s+1)*G) of the global batch G; inside it, micro-step k
of rank r reads the m positions starting at s*G + k*m*W + r*m. So ranks read disjoint parts,
together they cover every position, and the position survives a change of world size as long
as the global batch stays the same (Megatron's sampler works the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


def open_split(data, split: str, seq_len: int) -> PackedSequences | InstructionRows:
    """The rows of a prepared split: windows over text, or packed instruction examples."""
    if data.kind == "instruction":
        return InstructionRows(data.instruction_rows(split))
    return PackedSequences(data.tokens(split), seq_len)


@dataclass
class ShardedStream:
    num_sequences: int
    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    rank: int
    seed: int
    consumed_samples: int = 0
    _perms: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

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

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "seed": self.seed, "num_sequences": self.num_sequences}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_sequences"] != self.num_sequences:
            raise ValueError("the saved data position belongs to other data (seed or sequence count differ)")
        self.consumed_samples = state["consumed_samples"]

    def _sequences(self, start: int, count: int) -> np.ndarray:
        positions = np.arange(start, start + count)
        epochs, offsets = np.divmod(positions, self.num_sequences)
        return np.array([self._perm(int(e))[o] for e, o in zip(epochs, offsets)])

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)}
        return self._perms[epoch]


def validation_indices(num_sequences: int, count_per_rank: int, world_size: int, rank: int) -> np.ndarray:
    """A fixed, disjoint slice of validation sequences per rank, the same at every evaluation."""
    available = num_sequences // world_size
    return np.arange(rank, world_size * min(count_per_rank, max(1, available)), world_size) % num_sequences
