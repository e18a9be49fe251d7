"""What each rank adds to a checkpoint beyond the engine's shards: RNG states, data position, step.

Without these a resumed run would draw other random numbers and other data than the run it
continues; with them, per-step losses after a resume match an uninterrupted run bit for bit.
torch is imported inside the functions: the node launcher imports this module (through the engines)
for `state_owner` alone.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from orchestrator.rundir.layout import RANK_STATE, rank_state_owner

def state_owner(name: str) -> int:
    """The rank whose state file this is; any other file of a checkpoint is rank 0's."""
    owner = rank_state_owner(name)
    return 0 if owner is None else owner


class MissingRankState(RuntimeError):
    pass


def capture(step: int, stream_state: dict) -> dict:
    import torch

    state = {
        "step": step,
        "data": stream_state,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return state


def write(directory: Path, rank: int, state: dict) -> None:
    import torch

    torch.save(state, directory / RANK_STATE.format(rank=rank))


def read(checkpoint: Path, rank: int) -> dict:
    path = checkpoint / RANK_STATE.format(rank=rank)
    if not path.exists():
        raise MissingRankState(
            f"{checkpoint.name} has no RNG and data state for rank {rank}: it was saved by another world size "
            "or is incomplete; resume at the saved world size, or start fresh with --fresh"
        )
    import torch

    state = torch.load(path, weights_only=False)
    for key in ("step", "data", "rng"):
        if key not in state:
            raise MissingRankState(f"{path.name} in {checkpoint.name} lacks `{key}`: start fresh with --fresh")
    return state


def restore_rng(state: dict) -> None:
    import torch

    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
