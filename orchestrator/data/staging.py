"""Where a preparation writes before its result joins the data cache, and the clean-up of what crashed
or killed preparations left there.

A preparation builds in a staging directory of its own (`.<key>-<random>` in the cache) and publishes it
with one rename. For as long as it builds, it holds an exclusive lock (`flock`) on the directory's owner
file; the kernel drops the lock when the process ends, however it ends, so a staging directory whose owner
file nobody holds was abandoned. Each preparation that stages removes those first, whatever their key,
and leaves alone those a concurrent preparation still holds. Creating, publishing and clearing take the
cache's own lock for a moment, so that none of them sees another half done. On a file system without
locks (Lustre mounted without `flock`), preparations stage as before and nothing is cleared.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CACHE_LOCK = ".staging.lock"
OWNER = ".owner"
STAGING_NAME = re.compile(r"\.[0-9a-f]{16}-.+")
"""A dot, the cache key, a random tail."""


@contextmanager
def staged(cache_dir: Path, key: str) -> Iterator[Path]:
    """A new staging directory for `key`, held until the block ends, then removed unless published."""
    with _cache_locked(cache_dir) as locked:
        if locked:
            _clear_abandoned(cache_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        owner = open(staging / OWNER, "w")
        _lock(owner)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        owner.close()


def publish(staging: Path, target: Path, marker: str) -> None:
    """Moves prepared data into the cache in one rename; when another process (a concurrent run, a
    second worker) published the same key first (`target/marker` exists), its copy stands and this
    one is dropped."""
    with _cache_locked(target.parent):
        (staging / OWNER).unlink()
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / marker).exists():
                raise


@contextmanager
def _cache_locked(cache_dir: Path) -> Iterator[bool]:
    """Holds the cache's lock for the block; whether the file system has locks."""
    with open(cache_dir / CACHE_LOCK, "a") as lock:
        yield _lock(lock)


def _lock(file) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX)
    except OSError as error:
        if error.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            return False
        raise
    return True


def _clear_abandoned(cache_dir: Path) -> None:
    """Removes the staging directories no living preparation holds; the cache's lock is held, so none is
    being created or published, and one without an owner file (as versions before owner files left them)
    is abandoned too."""
    for path in cache_dir.iterdir():
        if not (STAGING_NAME.fullmatch(path.name) and path.is_dir()):
            continue
        try:
            owner = open(path / OWNER, "r+")
        except FileNotFoundError:
            shutil.rmtree(path, ignore_errors=True)
            continue
        with owner:
            try:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a preparation still building
            shutil.rmtree(path, ignore_errors=True)
