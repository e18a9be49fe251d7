"""Checkpoints on disk: atomic commit, verification, resume scan, retention.

A checkpoint exists only once its `manifest.json` (every file with size and content hash) is in
place and the directory carries its final name; both are made durable with fsync before the
`latest` pointer moves. `latest` is only a hint: resume scans newest to oldest for the first
checkpoint whose files match their manifest, and sets aside (never deletes) anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash
from pydantic import TypeAdapter

from orchestrator.errors import CheckpointError
from orchestrator.shared.filetree import Refused, Tree, digest_file, shown, walk, write_file
from orchestrator.rundir.checkpoint_records import MANIFEST, CheckpointManifest, FileEntry, read_manifest
from orchestrator.rundir.rows import CheckpointSetAside

LATEST = "latest"
STAGING_PREFIX = ".staging-"
SET_ASIDE = "set-aside"
REASON_FILE = "SET_ASIDE_REASON"
RANK_MANIFEST = "rank-{rank}.files.json"
_RANK_LIST = re.compile(r"rank-\d+\.files\.json")
TAG = re.compile(r"step-(\d{8})")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def step_of(tag: str) -> int:
    return int(TAG.fullmatch(tag).group(1))


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """After a crash the file is old or new, never torn (`filetree.write_file`, durable)."""
    write_file(path, text, durable=True)


def describe_files(directory: Path, names: list[str]) -> dict[str, dict]:
    """Size and content hash of each file, fsynced first so the hash is of what is on disk."""
    entries = {}
    for name in names:
        path = directory / name
        fsync_path(path)
        entries[name] = {"bytes": path.stat().st_size, "xxh3_128": digest_file(directory, name, xxhash.xxh3_128())}
    return entries


_RANK_FILES = TypeAdapter(dict[str, FileEntry])
"""A rank's file list (`describe_files`, as RANK_MANIFEST holds it): the manifest's entries, typed."""


def wait_for_rank_manifests(staging: Path, world_size: int, timeout_s: float) -> dict[str, FileEntry]:
    """The coordinator gathers every rank's file list; a missing rank past the timeout fails the save."""
    deadline = time.monotonic() + timeout_s
    files: dict[str, FileEntry] = {}
    for rank in range(world_size):
        path = staging / RANK_MANIFEST.format(rank=rank)
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank} did not report its checkpoint files within {timeout_s:.0f}s")
            time.sleep(0.05)
        files.update(_RANK_FILES.validate_json(path.read_text()))
    return files


def commit(root: Path, staging: Path, step: int, files: dict[str, FileEntry] | dict[str, dict], meta: dict) -> Path:
    manifest = CheckpointManifest(step=step, committed_at=time.time(), **meta, files=files)
    write_durably(staging / MANIFEST, manifest.to_json())
    fsync_path(staging)
    final = root / tag_for(step)
    if final.exists():
        set_aside(root, final, "replaced by a newer save of the same step")
    os.rename(staging, final)
    fsync_path(root)
    write_durably(root / LATEST, final.name)
    return final


@dataclass(frozen=True)
class Verdict:
    path: Path
    ok: bool
    reason: str = ""


def verify(checkpoint: Path) -> Verdict:
    """Whether the directory holds exactly the files its manifest lists, each with its size and hash.
    DeepSpeed's shards are pickles, unpickled only after this passes: a file added beside them
    (DeepSpeed globs for its shards), a link, a FIFO or an empty directory named like a shard (it
    would hang or break the load), or a changed file fails it."""
    try:
        files = read_manifest(checkpoint).files
    except FileNotFoundError:
        return Verdict(checkpoint, False, "no manifest (the save never committed)")
    except (OSError, ValueError) as exc:
        return Verdict(checkpoint, False, f"unreadable manifest: {exc}")
    problem = _first_problem(checkpoint, files, walk(checkpoint))
    return Verdict(checkpoint, problem is None, problem or "")


def _first_problem(checkpoint: Path, files: dict[str, FileEntry], tree: Tree) -> str | None:
    """What is wrong with the tree, cheapest to find first: anything but regular files, anything not
    listed, then each listed file by size and content hash. None when nothing is."""
    if tree.links:
        return f"{shown(tree.links[0])} is a symbolic link"
    if tree.others:
        name, what = tree.others[0]
        return f"{shown(name)}: {what}"
    if tree.empty_dirs:
        return f"{shown(tree.empty_dirs[0])}/: an empty directory, not in the manifest"
    unlisted = sorted(name for name in tree.files.keys() - set(files) if name != MANIFEST and not _RANK_LIST.fullmatch(name))
    if unlisted:
        return f"{shown(unlisted[0])} is not in the manifest"
    for name, expected in files.items():
        try:
            digest = digest_file(checkpoint, name, xxhash.xxh3_128(), expected.bytes)
        except FileNotFoundError:
            return f"{shown(name)} is missing"
        except (Refused, OSError) as exc:
            return f"{shown(name)}: {exc}"
        if digest != expected.xxh3_128:
            return f"{shown(name)} does not match its content hash"
    return None


def require_verified(checkpoint: Path) -> None:
    """Raise unless the checkpoint verifies: called right before anything in it is unpickled."""
    verdict = verify(checkpoint)
    if not verdict.ok:
        raise CheckpointError(f"{checkpoint.name} does not verify ({verdict.reason}): its files are not loaded")


def content_hash(manifest: CheckpointManifest) -> str:
    """A checkpoint's identity by content (every file's name, size and hash), not by its name."""
    files = {name: entry.model_dump() for name, entry in manifest.files.items()}
    return xxhash.xxh3_128_hexdigest(json.dumps(files, sort_keys=True).encode())


def committed(root: Path) -> list[Path]:
    """Checkpoint directories by step, newest first (verified or not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and TAG.fullmatch(p.name)]
    return sorted(found, key=lambda p: step_of(p.name), reverse=True)


def set_aside(root: Path, path: Path, reason: str) -> Path:
    target_dir = root / SET_ASIDE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / f"{path.name.lstrip('.')}-{int(time.time() * 1000)}"
    os.rename(path, target)
    _record_reason(target / REASON_FILE, reason)
    return target


def _record_reason(path: Path, reason: str) -> None:
    """Written as a new file: what the set-aside directory held under that name (a link planted to a
    file outside, in a checkpoint from elsewhere) is removed, never written through. Where that
    cannot be done (a directory by that name), the reason stays in the run's events alone."""
    try:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        return
    with open(fd, "w") as out:
        out.write(reason + "\n")


def newest_verified(root: Path) -> tuple[Path | None, list[Verdict]]:
    """The checkpoint a resume loads (the newest that verifies) and the verdicts on the newer ones
    that fail, read without changing anything: the CLI decides and says what the ranks will do
    (they set the failed ones aside in `find_resumable`)."""
    failed = []
    for checkpoint in committed(root):
        verdict = verify(checkpoint)
        if verdict.ok:
            return checkpoint, failed
        failed.append(verdict)
    return None, failed


def find_resumable(root: Path, events: list[CheckpointSetAside]) -> Path | None:
    """Newest checkpoint that verifies. Partial saves and failed checkpoints are set aside, and each
    decision is appended to `events`, as the event the run writes to say what it did."""
    if not root.is_dir():
        return None
    for staging in sorted(p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX)):
        reason = "partial save (interrupted before commit)"
        events.append(CheckpointSetAside(path=str(set_aside(root, staging, reason)), reason=reason))
    for checkpoint in committed(root):
        verdict = verify(checkpoint)
        if verdict.ok:
            return checkpoint
        events.append(CheckpointSetAside(path=str(set_aside(root, checkpoint, verdict.reason)), reason=verdict.reason))
    return None


def prune(root: Path, keep_last: int, keep_every: int | None, protect: Path | set[Path]) -> list[Path]:
    """Delete committed checkpoints beyond the newest `keep_last`, keeping every `keep_every`-th step.
    Called only after `protect` (the checkpoint just committed and so verified, and any a background
    upload still reads) is in place, so the only verified checkpoint is never deleted."""
    protected = protect if isinstance(protect, set) else {protect}
    removed = []
    for checkpoint in committed(root)[keep_last:]:
        if checkpoint in protected or (keep_every and step_of(checkpoint.name) % keep_every == 0):
            continue
        shutil.rmtree(checkpoint)
        removed.append(checkpoint)
    return removed
