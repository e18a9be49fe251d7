"""A directory tree as a manifest sees it, shared by checkpoint and release verification: names that
stay inside it, and what is really there, walked without following links (a file swapped for a
link must not verify as the file it points to)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


def inside(name: str) -> bool:
    """Whether a manifest's entry names a file inside its directory: relative, without `..`."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts and "\\" not in name


@dataclass
class Tree:
    """Relative names (POSIX form) of what is under a directory, by kind."""

    files: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)
    empty_dirs: list[str] = field(default_factory=list)


def walk(root: Path) -> Tree:
    tree = Tree()
    for directory, subdirs, names in os.walk(root, followlinks=False):
        here = Path(directory)
        if not subdirs and not names and here != root:
            tree.empty_dirs.append(here.relative_to(root).as_posix())
        for name in sorted([*subdirs, *names]):
            relative = (here / name).relative_to(root).as_posix()
            mode = os.lstat(here / name).st_mode
            if stat.S_ISLNK(mode):
                tree.links.append(relative)
            elif stat.S_ISREG(mode):
                tree.files.add(relative)
            elif not stat.S_ISDIR(mode):
                tree.special.append(relative)
    return tree
