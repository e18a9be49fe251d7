"""The remote checkpoint tier: committed checkpoints copied to object storage (`checkpoint.remote`,
any fsspec URL), and back.

A checkpoint's files go to `<url>/<tag>/`, each hashed and compared with the manifest right before it
is sent; then the sizes are listed back from the store, and only then is the commit marker written,
last, holding the manifest's content hash. A reader takes only a tag with a marker (a half-uploaded
checkpoint has none), checks the manifest against the marker, the listed sizes against the
manifest, then downloads into a staging directory and verifies every file's hash there
(`store.verify`), before anything in it can be unpickled. Replacing or deleting a tag removes its
marker first.

fsspec (and s3fs, for s3://) is imported here only: the CLI's light commands never import it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash
from pydantic import BaseModel, ConfigDict

from orchestrator.errors import CheckpointError
from orchestrator.rundir.checkpoint_records import MANIFEST, MAX_MANIFEST_BYTES, CheckpointManifest, read_manifest
from orchestrator.shared.checkpoint import store
from orchestrator.shared.filetree import digest_file

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

MARKER = "COMMITTED"


class CommitMarker(BaseModel):
    """What `MARKER` holds: the checkpoint's step and its manifest's content hash, so a reader takes
    only the manifest the upload committed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    step: int
    content_hash: str


@dataclass(frozen=True)
class Fetched:
    """A checkpoint downloaded and verified into the local checkpoint directory."""

    path: Path
    bytes: int
    seconds: float


class RemoteTier:
    def __init__(self, url: str, options: dict | None = None):
        """`options`: fsspec's storage options (`endpoint_url`...); credentials come from the environment."""
        import fsspec

        self.url = url.rstrip("/")
        self.fs: AbstractFileSystem
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(options or {}))
        # Object stores need no directories; a local one gets them as files are written. (makedirs is
        # not called: on s3 it would create a misspelled bucket.)
        if getattr(self.fs, "auto_mkdir", None) is False:
            self.fs.auto_mkdir = True

    def _path(self, tag: str, name: str | None = None) -> str:
        return f"{self.root}/{tag}" + (f"/{name}" if name else "")

    # -- listing ------------------------------------------------------------------------------

    def tags(self) -> list[str]:
        """Every checkpoint tag under the prefix, committed or not, newest first."""
        self.fs.invalidate_cache()
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = {name.rstrip("/").rsplit("/", 1)[-1] for name in names}
        return sorted((tag for tag in found if store.TAG.fullmatch(tag)), key=store.step_of, reverse=True)

    def committed_tags(self) -> list[str]:
        """The tags whose commit marker is in place, newest first."""
        return [tag for tag in self.tags() if self.fs.exists(self._path(tag, MARKER))]

    def _sizes(self, tag: str) -> dict[str, int]:
        self.fs.invalidate_cache()
        prefix = self._path(tag) + "/"
        found = self.fs.find(self._path(tag), detail=True)
        return {name[len(prefix):]: info["size"] for name, info in found.items() if name.startswith(prefix)}

    def _listing_problem(self, tag: str, manifest: CheckpointManifest) -> str | None:
        """What the store holds for `tag` that the manifest does not vouch for: a listed file missing or
        of another size. (Rank file lists and the marker may lie beside them.)"""
        sizes = self._sizes(tag)
        for name, entry in manifest.files.items():
            if name not in sizes:
                return f"{name} is missing on the store"
            if sizes[name] != entry.bytes:
                return f"{name} is {sizes[name]} bytes on the store, the manifest says {entry.bytes}"
        return None

    # -- upload -------------------------------------------------------------------------------

    def upload(self, checkpoint: Path) -> int:
        """Copy a committed local checkpoint to `<url>/<tag>/` and mark it committed; returns the bytes
        sent. Raises CheckpointError when what arrived is not what the manifest lists (no marker then)."""
        manifest = read_manifest(checkpoint)
        tag = checkpoint.name
        self.remove(tag)  # an earlier copy of this tag is never taken mixed with this one
        for name, entry in manifest.files.items():
            # Checked right before it goes (a committed file is never written again), then sent by the
            # store's own put: s3fs sends a large file's parts concurrently, which a stream through
            # one writer would not.
            if digest_file(checkpoint, name, xxhash.xxh3_128(), entry.bytes) != entry.xxh3_128:
                raise CheckpointError(f"{tag}/{name} changed on local disk since its commit: not uploaded")
            self.fs.put_file(str(checkpoint / name), self._path(tag, name))
        self.fs.put_file(str(checkpoint / MANIFEST), self._path(tag, MANIFEST))
        problem = self._listing_problem(tag, manifest)
        if problem:
            raise CheckpointError(f"{self.url}/{tag}: {problem} after the upload: not marked committed")
        self.fs.pipe_file(self._path(tag, MARKER), CommitMarker(step=manifest.step, content_hash=store.content_hash(manifest)).model_dump_json().encode())
        return sum(entry.bytes for entry in manifest.files.values())

    def remove(self, tag: str) -> None:
        """Delete a tag, its marker first: a reader sees it whole and committed, or not committed."""
        marker = self._path(tag, MARKER)
        if self.fs.exists(marker):
            self.fs.rm_file(marker)
        if self.fs.exists(self._path(tag)):
            self.fs.rm(self._path(tag), recursive=True)

    def prune(self, keep_last: int | None, keep_every: int | None, protect: str) -> list[str]:
        """Retention on the store, independent of the local one: committed tags beyond the newest
        `keep_last` (None: none), except every `keep_every`-th step; uncommitted tags older than
        `protect` (the tag just committed) are leftovers of interrupted uploads and go too."""
        committed = self.committed_tags()
        keep = set(committed[:keep_last] if keep_last else committed) | {protect}
        removed = []
        for tag in self.tags():
            old = tag in committed or store.step_of(tag) < store.step_of(protect)
            if tag in keep or not old or (keep_every and tag in committed and store.step_of(tag) % keep_every == 0):
                continue
            self.remove(tag)
            removed.append(tag)
        return removed

    # -- download -----------------------------------------------------------------------------

    def fetch(self, tag: str, root: Path) -> Fetched:
        """Download a committed tag into `root/<tag>`, verified file by file before it gets its name.
        Raises CheckpointError (one line) when it does not verify; nothing of it stays then."""
        tic = time.perf_counter()
        where = f"{self.url}/{tag}"
        staging = root / (store.STAGING_PREFIX + tag)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            manifest = self._fetch_manifest(tag, staging, where)
            problem = self._listing_problem(tag, manifest)
            if problem:
                raise CheckpointError(f"{where} does not verify ({problem}): not taken")
            for name in manifest.files:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._path(tag, name), str(staging / name))
            verdict = store.verify(staging)
            if not verdict.ok:
                raise CheckpointError(f"{where} does not verify ({verdict.reason}): not taken")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        final = root / tag
        if final.exists():
            store.set_aside(root, final, f"replaced by {where}")
        os.rename(staging, final)
        return Fetched(final, sum(entry.bytes for entry in manifest.files.values()), time.perf_counter() - tic)

    def _fetch_manifest(self, tag: str, staging: Path, where: str) -> CheckpointManifest:
        """The tag's manifest, read as a local one is (its names inside the checkpoint), and only if the
        marker's content hash says it is the manifest the upload committed."""
        marker = self.fs.cat_file(self._path(tag, MARKER))
        content = self.fs.cat_file(self._path(tag, MANIFEST), start=0, end=MAX_MANIFEST_BYTES + 1)
        (staging / MANIFEST).write_bytes(content)
        try:
            manifest = read_manifest(staging)
            committed_hash = CommitMarker.model_validate_json(marker).content_hash
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{where}: unreadable manifest or marker ({exc}): not taken") from None
        if store.content_hash(manifest) != committed_hash:
            raise CheckpointError(f"{where} does not verify (its manifest is not the one its upload committed): not taken")
        return manifest

    def fetch_newest(self, root: Path) -> tuple[Fetched | None, list[str]]:
        """The newest committed tag that verifies, downloaded into `root`; and, one line each, the newer
        committed tags refused on the way."""
        refused = []
        for tag in self.committed_tags():
            try:
                return self.fetch(tag, root), refused
            except CheckpointError as exc:
                refused.append(str(exc))
        return None, refused
