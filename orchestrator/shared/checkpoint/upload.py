"""Rank 0's background upload of committed checkpoints to the remote tier, off the training path.

The saver hands each checkpoint over once it has committed locally (`submit` returns at once). One
upload runs at a time; a checkpoint committed while another uploads waits, and a newer one
supersedes it before its upload begins (the newest checkpoint is the one a resume wants). A failed
try is retried 2, 4, 8... seconds later. The local retention leaves alone what an upload still
reads (`in_use`). At the run's end (or a stop) `close` waits for the last upload at most
`checkpoint.remote.timeout_s`; what is not uploaded by then has no marker on the store, and an event
says so.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Protocol

from orchestrator.checkpoint.spec import RemoteSpec
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.remote_events import CheckpointUploaded, CheckpointUploadFailed
from orchestrator.shared.checkpoint import store


class Uploader(Protocol):
    def submit(self, checkpoint: Path) -> None: ...

    def in_use(self) -> set[Path]: ...

    def close(self) -> None: ...


class NullUploader:
    """No remote tier (or not rank 0): nothing is uploaded."""

    def submit(self, checkpoint: Path) -> None:
        pass

    def in_use(self) -> set[Path]:
        return set()

    def close(self) -> None:
        pass


def uploader_for(spec: RemoteSpec | None, rank: int, record: Callable[[BaseEvent], None]) -> Uploader:
    """Rank 0 uploads (it commits every checkpoint); the other ranks and a recipe without `remote` do not."""
    return BackgroundUploader(spec, record) if spec is not None and rank == 0 else NullUploader()


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class BackgroundUploader:
    def __init__(self, spec: RemoteSpec, record: Callable[[BaseEvent], None], backoff_s: float = 2.0):
        self.spec, self.record, self.backoff_s = spec, record, backoff_s
        self._changed = threading.Condition()
        self._pending: Path | None = None
        self._current: Path | None = None
        self._closing = False
        self._tier = None
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, checkpoint: Path) -> None:
        with self._changed:
            superseded, self._pending = self._pending, checkpoint
            self._changed.notify()
        if superseded is not None:
            self._failed(superseded, f"superseded by {checkpoint.name} before its upload began", tries=0)

    def in_use(self) -> set[Path]:
        with self._changed:
            return {path for path in (self._current, self._pending) if path is not None}

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(self.spec.timeout_s)
        if self._thread.is_alive():
            for checkpoint in self.in_use():
                self._failed(checkpoint, f"not uploaded within checkpoint.remote.timeout_s={self.spec.timeout_s:g}: "
                                         "the run ended without it", tries=None)

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._pending is None and not self._closing:
                    self._changed.wait()
                if self._pending is None:
                    return
                self._current, self._pending = self._pending, None
            self._upload(self._current)
            with self._changed:
                self._current = None

    def _upload(self, checkpoint: Path) -> None:
        """Try, and retry with backoff; every outcome ends in an event."""
        error = ""
        for attempt in range(1, self.spec.retries + 2):
            try:
                tic = time.perf_counter()
                tier = self._open()
                sent = tier.upload(checkpoint)
                seconds = time.perf_counter() - tic
            except Exception as exc:  # the store, the network, a changed file: each try's failure is reported at the end
                error = one_line(exc)
                if attempt <= self.spec.retries:
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                continue
            removed, prune_error = self._prune(tier, checkpoint.name)
            self.record(CheckpointUploaded(step=store.step_of(checkpoint.name), url=self.spec.url, bytes=sent, upload_s=seconds,
                                           tries=attempt, removed=removed, prune_error=prune_error))
            return
        self._failed(checkpoint, error, tries=self.spec.retries + 1)

    def _open(self):
        """The store, opened on first use, on this thread (importing fsspec's backend costs a second)."""
        if self._tier is None:
            from orchestrator.shared.checkpoint.remote import RemoteTier

            self._tier = RemoteTier(self.spec.url, self.spec.options)
        return self._tier

    def _prune(self, tier, protect: str) -> tuple[list[str], str | None]:
        try:
            return tier.prune(self.spec.keep_last, self.spec.keep_every, protect), None
        except Exception as exc:  # retention is retried after the next upload; the checkpoint itself is committed
            return [], one_line(exc)

    def _failed(self, checkpoint: Path, reason: str, tries: int | None) -> None:
        self.record(CheckpointUploadFailed(step=store.step_of(checkpoint.name), url=self.spec.url, reason=reason, tries=tries))
