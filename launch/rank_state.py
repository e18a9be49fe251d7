"""What each rank adds to a checkpoint beyond the engine's shards: RNG states, data position, step.

Without these a resumed run would draw other random numbers and other data than the run it
continues; with them, per-step losses after a resume match an uninterrupted run bit for bit.
The file is JSON (torch's RNG states as base64 bytes), never a pickle: a checkpoint handed to
`orch run` must not be able to run code through it.
torch is imported inside the functions: the node launcher imports this module (through the engines)
for `state_owner` alone.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.rundir.layout import RANK_STATE, rank_state_owner
from orchestrator.shared.data.stream import StreamPosition

LEGACY_RANK_STATE = "rank-{rank}.pt"
"""The pickled form older versions wrote; refused, since unpickling it could run code."""


def state_owner(name: str) -> int:
    """The rank whose state file this is; any other file of a checkpoint is rank 0's."""
    owner = rank_state_owner(name)
    return 0 if owner is None else owner


class MissingRankState(RuntimeError):
    pass


class RngStates(BaseModel):
    """Each generator's state in plain data: python's and numpy's tuples as lists, torch's bytes in base64."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    python: tuple[int, list[int], float | None]
    numpy: tuple[str, list[int], int, int, float]
    torch: str
    cuda: list[str] | None = None


class RankState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    data: StreamPosition
    rng: RngStates


def _bytes_of(tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def _tensor_of(text: str):
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture(step: int, position: StreamPosition) -> RankState:
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = [_bytes_of(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None
    rng = RngStates(python=(version, list(internal), gauss), numpy=(name, keys.tolist(), pos, has_gauss, cached),
                    torch=_bytes_of(torch.get_rng_state()), cuda=cuda)
    return RankState(step=step, data=position, rng=rng)


def write(directory: Path, rank: int, state: RankState) -> None:
    (directory / RANK_STATE.format(rank=rank)).write_text(state.model_dump_json())


def read(checkpoint: Path, rank: int) -> RankState:
    path = checkpoint / RANK_STATE.format(rank=rank)
    if not path.exists() and (checkpoint / LEGACY_RANK_STATE.format(rank=rank)).exists():
        raise MissingRankState(
            f"{checkpoint.name} keeps rank {rank}'s RNG and data state as a pickle (an older version's format), "
            "which is not loaded since it can run code: start fresh with --fresh"
        )
    if not path.exists():
        raise MissingRankState(
            f"{checkpoint.name} has no RNG and data state for rank {rank}: it was saved by another world size "
            "or is incomplete; resume at the saved world size, or start fresh with --fresh"
        )
    try:
        return RankState.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise MissingRankState(f"{path.name} in {checkpoint.name} is not a rank state ({exc.errors()[0]['msg']}): "
                               "start fresh with --fresh") from None


def restore_rng(state: RankState) -> None:
    import torch

    rng = state.rng
    version, internal, gauss = rng.python
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng.numpy
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_tensor_of(rng.torch))
    if rng.cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor_of(s) for s in rng.cuda])
