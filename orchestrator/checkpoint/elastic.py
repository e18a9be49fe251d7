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
from orchestrator.shared.checkpoint import store
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import ElasticRecord, write_elastic


def prepare_elastic_resume(run: RunDir, checkpoint: Path, backend: str, world_size: int) -> ElasticRecord:
    """Convert the checkpoint the resume continues from (verified by `check_resume`) once, and record it for the ranks."""
    universal_root = BACKENDS[backend].universal_checkpoint(checkpoint, run.universal / checkpoint.name)
    record = ElasticRecord(tag=checkpoint.name, universal_root=universal_root or checkpoint.parent,
                           from_world_size=store.read_manifest(checkpoint).world_size, to_world_size=world_size,
                           converted=universal_root is not None)
    write_elastic(run, record)
    return record
