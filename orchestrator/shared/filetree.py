"""A directory tree as a manifest sees it, shared by checkpoint and release verification: names that
stay inside it, what is really there, and its listed files read as what they claim to be; and the
one way every plane writes a file into such a tree (`write_file`).

Nothing here follows a link: the tree is walked and every file opened one directory at a time,
each step relative to the last with `O_NOFOLLOW`, so a file or directory swapped for a link while a
check runs is refused rather than read through. A listed file must be a regular file with one
name: a FIFO would block the read forever (it is opened non-blocking, then refused), a device
would serve endless bytes, and a hard link's other name lets the file change from outside the
tree after it verified. The walk is iterative and stops at `MAX_DEPTH`: a hostile tree 1,100
directories deep exhausted Python's recursion.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

MAX_DEPTH = 32
"""Directories below a tree's root that a walk enters; a checkpoint or a release uses two at most."""
_CHUNK = 8 << 20
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISDIR: "a directory", stat.S_ISLNK: "a symbolic link"}


def inside(name: str) -> bool:
    """Whether a manifest's entry names a file inside its directory: relative, without `..`."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts and "\\" not in name


def shown(name: str) -> str:
    """A name as output shows it: quoted with escapes when it holds a newline or another character
    that is not printable, so a file name cannot forge or hide a line of a verdict."""
    return name if name.isprintable() else repr(name)


@dataclass
class Tree:
    """What is under a directory, by kind: relative names (POSIX form), regular files with their size."""

    files: dict[str, int] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    empty_dirs: list[str] = field(default_factory=list)
    others: list[tuple[str, str]] = field(default_factory=list)
    """(name, what it is): special files, directories too deep to enter or that cannot be read."""


def walk(root: Path) -> Tree:
    tree = Tree()
    pending: list[tuple[str, ...]] = [()]
    while pending:
        parts = pending.pop()
        try:
            fd = _open_dir(root, parts)
        except OSError as exc:
            tree.others.append(("/".join(parts), f"a directory that cannot be read ({exc.strerror})"))
            continue
        try:
            _list(fd, parts, tree, pending)
        finally:
            os.close(fd)
    tree.links.sort()
    tree.empty_dirs.sort()
    tree.others.sort()
    return tree


def _list(fd: int, parts: tuple[str, ...], tree: Tree, pending: list[tuple[str, ...]]) -> None:
    """One directory's entries into `tree`, its subdirectories onto `pending` (while `fd` is open:
    the entries are examined relative to it)."""
    with os.scandir(fd) as listing:
        entries = list(listing)
    if not entries and parts:
        tree.empty_dirs.append("/".join(parts))
    for entry in entries:
        relative = "/".join((*parts, entry.name))
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError as exc:
            tree.others.append((relative, f"cannot be read ({exc.strerror})"))
            continue
        if stat.S_ISLNK(status.st_mode):
            tree.links.append(relative)
        elif stat.S_ISREG(status.st_mode):
            tree.files[relative] = status.st_size
        elif not stat.S_ISDIR(status.st_mode):
            tree.others.append((relative, f"not a regular file ({_kind(status.st_mode)})"))
        elif len(parts) < MAX_DEPTH:
            pending.append((*parts, entry.name))
        else:
            tree.others.append((relative, f"a directory more than {MAX_DEPTH} levels deep"))


def _open_dir(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of `root/parts...`, each step taken relative to the last without following a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in parts:
        try:
            step = os.open(part, _DIRECTORY, dir_fd=fd)
        finally:
            os.close(fd)
        fd = step
    return fd


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS.items() if test(mode)), "of an unknown kind")


class Refused(ValueError):
    """A listed file that is not what a manifest can vouch for; `what` reads after its name. (A
    missing one raises FileNotFoundError, as `open` does.)"""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def digest_file(root: Path, name: str, digest: Digest, expected_bytes: int | None = None) -> str:
    """The hex digest of the listed file `name` under `root`, read safely (see the module's
    docstring); a size other than `expected_bytes` is refused before a byte is read (a listed file
    swapped for a 4 GB sparse one would be hashed in full). Raises Refused, or FileNotFoundError."""
    fd, size = _open_regular(root, name)
    with open(fd, "rb") as handle:
        if expected_bytes is not None and size != expected_bytes:
            raise Refused(f"{size} bytes, the manifest says {expected_bytes}")
        left = size  # no further: a file that grows while it is read is hashed as it was opened
        while left and (block := handle.read(min(_CHUNK, left))):
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def read_file(root: Path, name: str, max_bytes: int) -> bytes:
    """The content of `name` under `root`, read safely (a manifest, an index), at most `max_bytes`.
    Raises Refused, or FileNotFoundError."""
    fd, size = _open_regular(root, name)
    with open(fd, "rb") as handle:
        if size > max_bytes:
            raise Refused(f"{size:,} bytes, more than the {max_bytes:,} it may have")
        return handle.read(size)


def read_json(root: Path, name: str, max_bytes: int) -> object:
    """`read_file`, parsed as JSON; ValueError for what is not (nested too deeply included)."""
    content = read_file(root, name, max_bytes)
    try:
        return json.loads(content)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _open_regular(root: Path, name: str) -> tuple[int, int]:
    """A descriptor of the regular, singly linked file `name` under `root`, and its size. Its kind is
    looked at before the open (opening a device can act) and again on the descriptor (it may have
    been swapped in between)."""
    *directories, last = PurePosixPath(name).parts
    try:
        parent = _open_dir(root, tuple(directories))
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or not directories:
            raise  # missing, or the root itself is not a directory one can open
        raise Refused(f"not reached through directories alone ({exc.strerror})") from None  # a link or a file on the way
    try:
        _require_regular(os.stat(last, dir_fd=parent, follow_symlinks=False))
        fd = os.open(last, _FILE, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        status = os.fstat(fd)
        _require_regular(status)
    except BaseException:
        os.close(fd)
        raise
    return fd, status.st_size


def _require_regular(status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise Refused(_kind(status.st_mode) if stat.S_ISLNK(status.st_mode) else f"not a regular file ({_kind(status.st_mode)})")
    if status.st_nlink > 1:
        raise Refused(f"a hard link (one file under {status.st_nlink} names, so it can change from outside)")


def write_file(path: Path, content: str, *, durable: bool = False) -> None:
    """Replace `path` with `content` whole, so a reader sees the old file or the new one, never half.

    The content goes to a temporary file beside it, created exclusively under a random name, then
    renamed over `path`: a link planted at `path` is replaced, not written through, and one planted
    at a temporary name cannot be guessed (a fixed `.name.tmp`, opened with `write_text`, followed
    a link there to a file outside). `durable` also fsyncs the file and then its directory, so after
    a crash the file is the old or the new one (checkpoint manifests, `latest`)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, _NEW_FILE, 0o666)  # the umask applies, as for any new file
    try:
        with open(fd, "w", encoding="utf-8") as out:
            out.write(content)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
