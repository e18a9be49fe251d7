"""The raw disk, for the checkpoint benchmark's commit throughput: how fast this directory can make
bytes durable by hand, with the saver's own fsync and hash."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import xxhash

import common  # noqa: F401  puts the checkout on sys.path
from orchestrator.shared.checkpoint.store import fsync_path  # the saver's own fsync
from orchestrator.shared.filetree import digest_file  # and the hash it records

MEMORY = Path("/dev/shm")
PROBES_PER_RUN = 3
CHUNK_BYTES = 8 << 20


def probe_disk(directory: Path, nbytes: int) -> dict[str, list[float]]:
    """Seconds to make `nbytes` durable in `directory`, two ways, PROBES_PER_RUN times each.

    write_fsync_s: write from memory, fsync the file and the directory (the floor for any saver).
    copy_fsync_hash_s: what the async saver does per file after the stall, by hand in one process:
    copy from a file in /dev/shm, fsync, xxh3-128 hash, fsync the directory.
    """
    payload = os.urandom(min(nbytes, CHUNK_BYTES))
    target = directory / "raw-disk-probe.bin"
    source = MEMORY / f"orch-bench-probe-{os.getpid()}.bin" if MEMORY.is_dir() else None
    found: dict[str, list[float]] = {"write_fsync_s": [], "copy_fsync_hash_s": []}
    try:
        if source is not None:
            _write(source, payload, nbytes, durable=False)
        for _ in range(PROBES_PER_RUN):
            tic = time.perf_counter()
            _write(target, payload, nbytes, durable=True)
            fsync_path(directory)
            found["write_fsync_s"].append(time.perf_counter() - tic)
            target.unlink()
            if source is not None:
                tic = time.perf_counter()
                shutil.copyfile(source, target)
                fsync_path(target)
                digest_file(target.parent, target.name, xxhash.xxh3_128())
                fsync_path(directory)
                found["copy_fsync_hash_s"].append(time.perf_counter() - tic)
                target.unlink()
    finally:
        target.unlink(missing_ok=True)
        if source is not None:
            source.unlink(missing_ok=True)
    return found


def _write(path: Path, payload: bytes, nbytes: int, durable: bool) -> None:
    with path.open("wb") as out:
        left = nbytes
        while left > 0:
            left -= out.write(payload[: min(left, len(payload))])
        out.flush()
        if durable:
            os.fsync(out.fileno())
