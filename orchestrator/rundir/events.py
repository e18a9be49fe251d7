"""The append-only logs of a run: `events.jsonl` (starts, resumes, checkpoints, preemptions, Slurm
job changes) and `metrics.jsonl` (one row per logged step), and `energy/series.jsonl` (each node's energy over time).

Rank 0 and the batch step append; the CLI, the dashboards' mirror and a resuming rank read. A
crash, a kill or a full disk can leave the last line half written. Readers skip a torn line (the
next append closes it and starts a fresh one, so after a resume it may stand mid-file), so a run
that died mid-write can still be shown, followed, mirrored and resumed. A line that parses but is
no row of its log (`{}`, `[]`, `{"step": "x"}`: a hand edit, another tool's output) is skipped the
same way, so every reader can index a row's known fields without checking them again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, TypeVar

from orchestrator.rundir.base_event import BaseEvent

R = TypeVar("R")


def append(log: Path, event: BaseEvent) -> BaseEvent:
    """The event, stamped with the time it is written, as a line of `log`; returns what was written.
    Every writer passes one of the kinds in `rows.py`, so a writer's mistake fails where the event is
    built (a pydantic ValidationError), not in every later reader."""
    stamped = event.model_copy(update={"time": time.time()})
    append_row(log, stamped.line())
    return stamped


def append_row(log: Path, row: dict) -> None:
    """One JSON line; a line left unterminated by a crash is closed first, so this row stays whole."""
    with log.open("a+b") as out:
        out.seek(0, 2)
        cut_short = False
        if out.tell():
            out.seek(-1, 2)
            cut_short = out.read(1) != b"\n"
        out.write((("\n" if cut_short else "") + json.dumps(row) + "\n").encode())


def read(log: Path, parse: Callable[[dict], R | None] | None = None) -> list[R] | list[dict]:
    """Every whole line of a JSON-lines log that is an object and that `parse` (if given) makes a row
    of (see `rows`); torn ones and any other line are left out."""
    if not log.exists():
        return []
    objects = [o for o in (_parse(line) for line in log.read_text(errors="replace").splitlines()) if o is not None]
    return objects if parse is None else [row for row in map(parse, objects) if row is not None]


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) else None
