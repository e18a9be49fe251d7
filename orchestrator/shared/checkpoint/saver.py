"""The rank side of a checkpoint save: stage, describe, commit, optionally in the background.

Every rank writes its shards into a staging directory, fsyncs and hashes the files it wrote and
reports them in a per-rank file list; rank 0 gathers the lists (with a timeout), commits the
manifest and renames the directory into place. With `async_save` the engine writes to host
memory (`/dev/shm`) and only that blocks training; copying to the checkpoint directory, hashing
and the commit happen on a background thread, with at most one save in flight. With a remote tier
(`checkpoint.remote`), rank 0 hands each committed checkpoint to its uploader.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.shared.checkpoint.upload import NullUploader, Uploader
from orchestrator.shared.checkpoint.store import (
    RANK_MANIFEST, STAGING_PREFIX, commit, describe_files, prune, tag_for, wait_for_rank_manifests, write_durably,
)

@dataclass(frozen=True)
class SaveReport:
    step: int
    stall_s: float
    bytes: int = 0
    write_s: float = 0.0
    path: str = ""


class CheckpointSaver:
    def __init__(self, root: Path, rank: int, world_size: int, keep_last: int, keep_every: int | None,
                 commit_timeout_s: float, memory_stage: Path | None, on_committed: Callable[[SaveReport], None],
                 owner_of: Callable[[str], int], uploader: Uploader = NullUploader()):
        """`owner_of` says which rank wrote a staged file (the engine knows its library's naming):
        each rank hashes and reports its own files. `uploader` copies each committed checkpoint to the
        remote tier (rank 0's; the others' do nothing)."""
        self.root, self.rank, self.world = root, rank, world_size
        self.keep_last, self.keep_every, self.timeout = keep_last, keep_every, commit_timeout_s
        self.memory_stage = memory_stage
        self.on_committed, self.owner_of, self.uploader = on_committed, owner_of, uploader
        self._inflight: threading.Thread | None = None
        self._error: BaseException | None = None
        root.mkdir(parents=True, exist_ok=True)

    def save(self, step: int, write_shards: Callable[[Path, str], None], meta: dict) -> float:
        """Stage and start committing a checkpoint of `step`; returns the stall (seconds training was blocked)."""
        self.wait()
        name = STAGING_PREFIX + tag_for(step)
        base = self.memory_stage or self.root
        tic = time.perf_counter()
        write_shards(base, name)
        args = (step, base / name, self.root / name, meta, time.perf_counter() - tic)
        if self.memory_stage is None:
            self._finish(*args)
        else:
            self._inflight = threading.Thread(target=self._run, args=args, name=f"checkpoint-{step}", daemon=True)
            self._inflight.start()
        return time.perf_counter() - tic

    def close(self) -> None:
        """Wait for the last save (and, within its bound, its upload) and remove this run's host-memory staging area."""
        self.wait()
        self.uploader.close()
        if self.memory_stage is None or not self.memory_stage.exists():
            return
        # Each rank already deleted the files it staged; what lies at the top is DeepSpeed's copy of
        # its recovery scripts. Ranks of this node share the directory, so only empty directories
        # are removed, whichever rank gets here last.
        try:
            for script in self.memory_stage.glob("*.py"):
                script.unlink(missing_ok=True)
            directories = sorted((p for p in self.memory_stage.rglob("*") if p.is_dir()), reverse=True) + [self.memory_stage]
        except FileNotFoundError:  # another rank of the node removed it while this one looked
            return
        for directory in directories:
            try:
                directory.rmdir()
            except OSError:
                pass

    def wait(self) -> None:
        """Block until the save in flight (if any) has committed; re-raise its failure here."""
        if self._inflight is not None:
            self._inflight.join()
            self._inflight = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, *args) -> None:
        try:
            self._finish(*args)
        except BaseException as exc:  # surfaced to the training thread by wait()
            self._error = exc

    def _finish(self, step: int, source: Path, staging: Path, meta: dict, stall: float) -> None:
        tic = time.perf_counter()
        mine = sorted(
            str(p.relative_to(source)) for p in source.rglob("*")
            if p.is_file() and self.owner_of(str(p.relative_to(source))) == self.rank and not p.name.endswith(".files.json")
        )
        if source != staging:
            for name in mine:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, staging / name)
        entries = describe_files(staging, mine)
        write_durably(staging / RANK_MANIFEST.format(rank=self.rank), json.dumps(entries))
        if source != staging:
            for name in mine:
                (source / name).unlink()
        if self.rank != 0:
            return
        files = wait_for_rank_manifests(staging, self.world, self.timeout)
        final = commit(self.root, staging, step, files, meta)
        prune(self.root, self.keep_last, self.keep_every, protect={final, *self.uploader.in_use()})
        size = sum(entry.bytes for entry in files.values())
        write_s = time.perf_counter() - tic
        blocked = stall + (write_s if source == staging else 0.0)  # a synchronous commit blocks training too
        self.on_committed(SaveReport(step, blocked, size, write_s, str(final)))
        self.uploader.submit(final)  # after its `checkpoint` event: the upload's events follow it
