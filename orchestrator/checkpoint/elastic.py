"""Resuming at another world size: convert the checkpoint with DeepSpeed's universal-checkpoint tool.

ZeRO shards are laid out per rank, so a run saved by 2 ranks cannot be loaded by 1 or 4 as is.
DeepSpeed's `ds_to_universal` rewrites them per parameter; the ranks then load with
`checkpoint.load_universal`. The data position is one global number and carries over exactly; the
per-rank RNG states cannot, so the resumed run reseeds them from the seed and the step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from orchestrator.checkpoint import store
from orchestrator.distributed.horovod import STATE_DIR
from orchestrator.errors import ResumeError

ELASTIC_FILE = "elastic.json"


def newest_verified(checkpoint_dir: Path) -> Path | None:
    return next((c for c in store.committed(checkpoint_dir) if store.verify(c).ok), None)


def prepare_elastic_resume(run_dir: Path, checkpoint_dir: Path, world_size: int) -> dict:
    """Convert the newest verified checkpoint (once) and record it in `elastic.json` for the ranks."""
    checkpoint = newest_verified(checkpoint_dir)
    if checkpoint is None:
        raise ResumeError(f"no verified checkpoint in {checkpoint_dir} to resume at world size {world_size}")
    universal_root = run_dir / "universal"
    target = universal_root / checkpoint.name
    converted = not (checkpoint / STATE_DIR).is_dir()  # Horovod's state is whole in every checkpoint
    if not converted:
        universal_root = checkpoint_dir
    elif not (target / "zero").is_dir():
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(checkpoint),
                   "--output_folder", str(target), "--inject_missing_state"]
        result = subprocess.run(command, capture_output=True, text=True, env={"DS_ACCELERATOR": "cpu", **os.environ})
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise ResumeError(f"converting {checkpoint.name} for world size {world_size} failed: {lines[-1]}")
    record = {"tag": checkpoint.name, "universal_root": str(universal_root),
              "from_world_size": store.read_manifest(checkpoint)["world_size"], "to_world_size": world_size, "converted": converted}
    (run_dir / ELASTIC_FILE).write_text(json.dumps(record, indent=1))
    return record
