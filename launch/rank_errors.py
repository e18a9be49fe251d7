"""Which rank a crash started on: each rank records its fatal exception as it is raised, in its own
file of the run directory (`logs/rank-N.error`, the traceback), whose time the node launcher reads.

A crash rarely ends one rank alone. Its peers fail too, on the connection the dead rank closed, and
each prints its own traceback; one of them may finish writing its log before the rank that raised
first does (Horovod's peers fail at once), so the log that went quiet first is no sure sign. The
moment of the exception is: a peer's error comes only after the first rank's exception has ended its
process. Like torchelastic's error file (TORCHELASTIC_ERROR_FILE), but timed by its modification
time, which the same filesystem stamps as it stamps the logs: a rank with no record (killed by a
signal, `os._exit`) is timed by when its log was last written, and on a shared filesystem the
records of several nodes compare alike. The launcher removes its ranks' records before each attempt.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.rundir.layout import RunDir


@contextmanager
def recorded(run: RunDir, rank: int) -> Iterator[None]:
    """Around a rank's life: an exception that ends it is written to its record at once, before
    anything else it does (its traceback in the log, the interpreter's exit), then passes on."""
    try:
        yield
    except BaseException as exc:
        if not (isinstance(exc, SystemExit) and exc.code in (None, 0)):
            _record(run.rank_error(rank))
        raise


def _record(path: Path) -> None:
    try:
        path.write_text(traceback.format_exc())
    except OSError:  # a full disk: the launcher falls back on the log's time
        pass


def clear(run: RunDir, ranks: range) -> None:
    """Before an attempt: the records of the ranks' earlier attempts go."""
    for rank in ranks:
        run.rank_error(rank).unlink(missing_ok=True)


def failed_at_ns(run: RunDir, rank: int) -> float:
    """When the rank failed, on the run directory's filesystem clock (ns since the epoch): its record's
    time, else when its log was last written; inf when neither can be read."""
    for path in (run.rank_error(rank), run.rank_log(rank)):
        try:
            return path.stat().st_mtime_ns
        except OSError:
            continue
    return math.inf
