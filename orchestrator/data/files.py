"""What preparation accepts as a data file, and how it lists, opens and reads many of them.

Only regular files are data: a FIFO blocks its reader forever and a device (`/dev/zero`) never
ends. A path the recipe names itself (`data.path`, a source's `path`, a `data.decontaminate` file)
may be a symbolic link, since the user chose it; inside a data directory a link is refused, so
what is read is what lies under the directory, and each file is recorded under its own path.

A directory is listed in one `os.scandir` walk, in sorted order, from the names and types the
directory entries carry (no `stat` per file: 200,000 files list in a fraction of a second).
Files are opened without blocking and checked on the open descriptor, so a file swapped for a
FIFO after listing is refused too. Many small files are read and hashed by a few threads, in
order, for the file systems where an open waits on a server (Lustre, NFS: a millisecond or more
each, which threads wait out together); on a local disk it changes little (200,000 small files
read in 2.8 s on 8 threads, 2.2 s on one, with 2 busy cores and the files cached or not).
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Literal, TypeVar

from orchestrator.errors import DataError

T = TypeVar("T")
R = TypeVar("R")

Kind = Literal["file", "directory", "file or directory"]
READ_THREADS = 8
"""Threads that open, read and hash files: a network file system answers this many opens at once."""
READ_BATCH = 32
"""Files a thread takes at once."""
READ_AHEAD_BYTES = 64 * 2**20
"""Text read ahead of its turn at most: files up to this over the files in flight are read by the
threads, larger ones in their turn, so memory stays bounded whatever the file sizes."""
KINDS = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO",
         stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def shown(path: Path | str) -> str:
    """`path` as one line of a message: a newline or other control character in a name is escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def path_problem(path: Path, kind: Kind) -> str | None:
    """Why `path` (links followed) is not the `kind` the recipe needs there, without opening it: a
    directory is a pretrained one (a model's, a tokenizer's); data is a regular file or a directory of them."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"path does not exist: {shown(path)}"
    except OSError as exc:
        return f"cannot read {shown(path)}: {exc.strerror}"
    if stat.S_ISREG(mode) and kind != "directory" or stat.S_ISDIR(mode) and kind != "file":
        return None
    if kind == "directory":
        return f"{shown(path)} is {_kind(mode)}, not a directory: give a release, an `orch export` or a save_pretrained directory"
    return _not_regular(path, mode, or_directory=kind != "file")


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (links followed); a FIFO is not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DataError(f"cannot read {shown(path)}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(_not_regular(path, mode))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


SETTLED_NS = 2 * 10**9
"""How much older than a listing a directory's modification time must be for the listing to be reused:
file systems keep the time in coarse ticks (a second on some), and two changes in one tick leave one time."""


@dataclass(frozen=True)
class Listing:
    files: list[Path]
    directories: dict[str, int]
    """Each directory walked and its modification time when it was listed."""
    listed_ns: int

    def current(self) -> bool:
        """Whether no directory walked can have gained, lost or renamed an entry since (which changes its
        modification time); what a file holds is not the listing's business."""
        try:
            return all(mtime_ns < self.listed_ns - SETTLED_NS and os.stat(directory).st_mtime_ns == mtime_ns
                       for directory, mtime_ns in self.directories.items())
        except OSError:
            return False


_last: tuple[tuple[str, tuple[str, ...]], Listing] | None = None
"""The last directory listed (with its suffixes), kept while it is current: validation, the plan's
look-up of prepared data and preparation each list the same directory in one command, and 200,000
paths take a second to make."""


def list_data_files(root: Path, suffixes: Iterable[str]) -> list[Path]:
    """The regular files under `root` whose names end in one of `suffixes`, depth first in sorted
    order (the order of `sorted(root.rglob(...))`: by their paths' parts). A link or special file
    named like data, a link to a directory, or a directory that cannot be listed is refused:
    skipping it would leave out data the user meant, following it would read from outside `root`."""
    global _last
    key = (os.path.abspath(root), tuple(suffixes))
    if _last is None or _last[0] != key or not _last[1].current():
        _last = (key, _walk(root, key[1]))
    return list(_last[1].files)


def _walk(root: Path, suffixes: tuple[str, ...]) -> Listing:
    listing = Listing([], {}, time.time_ns())
    walking = [(root, iter(_entries(root, listing)))]  # each open directory and its entries still to visit, the deepest last
    while walking:
        directory, entries = walking[-1]
        entry = next(entries, None)
        if entry is None:
            walking.pop()
            continue
        data = entry.name.endswith(suffixes) and entry.name not in suffixes  # `.jsonl` alone has no suffix, as for Path.suffix
        if entry.is_dir(follow_symlinks=False):
            walking.append((directory / entry.name, iter(_entries(directory / entry.name, listing))))
        elif entry.is_symlink() and (data or entry.is_dir()):
            raise DataError(f"{shown(entry.path)} is a symbolic link inside the data directory {shown(root)}: links there are "
                            "not followed; copy the file in, or name its target as a source of its own")
        elif data and not entry.is_file(follow_symlinks=False):
            raise DataError(_not_regular(entry.path, _mode(entry)))
        elif data:
            listing.files.append(directory / entry.name)
    return listing


def _entries(directory: Path, listing: Listing) -> list[os.DirEntry]:
    """The directory's entries by name, its modification time noted first (a change while it is read shows next time)."""
    try:
        listing.directories[os.fspath(directory)] = os.stat(directory).st_mtime_ns
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {shown(directory)}: {exc.strerror}") from None


def _mode(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_mode
    except OSError:  # gone since it was listed
        return 0


def _kind(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "a special file")


def _not_regular(path: Path | str, mode: int, or_directory: bool = False) -> str:
    return f"{shown(path)} is {_kind(mode)}, not a regular file{' or a directory' if or_directory else ''}: data is read from regular files only"


def first_line(path: Path, limit: int) -> bytes | None:
    """The first non-blank line of a regular file, read no further than `limit` bytes: empty when the
    file has none, None when the line goes on past `limit`."""
    with open_regular(path) as f:
        while limit > 0:
            line = f.readline(limit)
            if not line:
                return b""
            if len(line) == limit and not line.endswith(b"\n"):
                return None
            if line.strip():
                return line
            limit -= len(line)
    return None


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int = READ_THREADS, batch: int = READ_BATCH) -> Iterator[R]:
    """`map(fn, items)` on `threads` threads, `batch` items a task (a task per small file cost more
    than reading it), results in order, at most two tasks per thread in flight."""
    def run(chunk: list[T]) -> list[R]:
        return [fn(item) for item in chunk]

    items = iter(items)
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        while chunk := list(islice(items, batch)):
            pending.append(pool.submit(run, chunk))
            if len(pending) >= 2 * threads:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
