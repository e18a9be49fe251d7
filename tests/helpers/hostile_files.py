"""Trees a verifier must refuse without hanging or recursing: a directory chain deeper than Python's
recursion limit, and a FIFO a reader would wait on forever."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEEP = 1100
"""Directories in a chain: past Python's default recursion limit (1,000), which os.walk and rglob hit."""


@contextmanager
def deep_chain(top: Path, depth: int = DEEP) -> Iterator[Path]:
    """`top/d/d/...`, `depth` directories, removed afterwards from the bottom up (shutil.rmtree and
    pytest's clean-up recurse, and would hit the very limit under test)."""
    path = top
    for _ in range(depth):
        path.mkdir(parents=path is top)
        path = path / "d"
    try:
        yield top
    finally:
        chain = [top]
        while (chain[-1] / "d").is_dir():
            chain.append(chain[-1] / "d")
        for directory in reversed(chain):
            directory.rmdir()


@contextmanager
def fifo_unblocked(fifo: Path) -> Iterator[None]:
    """While the body runs, a reader blocked opening `fifo` (the flaw under test) is let through: a
    writer opens and closes it once a reader waits, so the reader sees an empty file and the test
    fails on its assertion instead of hanging. Waiting readers are polled for, not timed."""
    done = threading.Event()

    def let_through() -> None:
        while not done.wait(0.5):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # fails (ENXIO) unless a reader waits
            except OSError:
                continue

    thread = threading.Thread(target=let_through, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
