"""The events of the remote checkpoint tier (`checkpoint.remote`), written by rank 0's background
uploader: a checkpoint copied to object storage and marked committed there, or not (with why).
Part of the union of every kind in `orchestrator.rundir.rows`."""

from __future__ import annotations

from typing import Literal, Optional

from orchestrator.rundir.base_event import BaseEvent


class CheckpointUploaded(BaseEvent):
    """Every file of a committed checkpoint is on the store, its bytes hashed as they went and its
    sizes listed back, and its commit marker written (last)."""
    event: Literal["checkpoint_uploaded"] = "checkpoint_uploaded"
    step: Optional[int] = None
    url: Optional[str] = None
    bytes: Optional[int] = None
    upload_s: Optional[float] = None
    tries: Optional[int] = None
    removed: Optional[list[str]] = None
    """Older checkpoints the store's retention (`checkpoint.remote.keep_last`/`keep_every`) deleted."""
    prune_error: Optional[str] = None

    def describe(self) -> str:
        rate = f", {self.bytes / self.upload_s / 1e6:.0f} MB/s" if self.bytes and self.upload_s else ""
        return f"uploaded step {self.step} to {self.url} ({(self.bytes or 0) / 1e6:.1f} MB in {self.upload_s or 0:.1f} s{rate})"


class CheckpointUploadFailed(BaseEvent):
    """A checkpoint that is not committed on the store: its tries failed, a newer one superseded it
    before its upload began, or the run ended first. The store has no marker for it, so no resume takes it."""
    event: Literal["checkpoint_upload_failed"] = "checkpoint_upload_failed"
    step: Optional[int] = None
    url: Optional[str] = None
    reason: Optional[str] = None
    tries: Optional[int] = None

    def describe(self) -> str:
        return f"step {self.step} not uploaded to {self.url}: {self.reason}"
