"""Resuming at another world size: make the newest verified checkpoint loadable by the new world.

ZeRO shards are laid out per rank, so a run saved by 2 ranks cannot be loaded by 1 or 4 as is: the
backend converts it (DeepSpeed's universal format) or loads it as it is (Horovod's whole state).
The data position is one global number and carries over exactly; the per-rank RNG states cannot,
so the resumed run reseeds them from the seed and the step. The decision goes to the ranks in
`elastic.json`.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.backends.registry import BACKENDS
from orchestrator.checkpoint import store
from orchestrator.errors import ResumeError
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import ElasticRecord, write_elastic


def newest_verified(checkpoint_dir: Path) -> Path | None:
    return next((c for c in store.committed(checkpoint_dir) if store.verify(c).ok), None)


def prepare_elastic_resume(run: RunDir, checkpoint_dir: Path, backend: str, world_size: int) -> ElasticRecord:
    """Convert the newest verified checkpoint (once) and record it for the ranks."""
    checkpoint = newest_verified(checkpoint_dir)
    if checkpoint is None:
        raise ResumeError(f"no verified checkpoint in {checkpoint_dir} to resume at world size {world_size}")
    universal_root = BACKENDS[backend].universal_checkpoint(checkpoint, run.universal / checkpoint.name)
    record = ElasticRecord(tag=checkpoint.name, universal_root=universal_root or checkpoint_dir,
                           from_world_size=store.read_manifest(checkpoint)["world_size"], to_world_size=world_size,
                           converted=universal_root is not None)
    write_elastic(run, record)
    return record
