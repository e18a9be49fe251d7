"""The append-only logs of a run: `events.jsonl` (starts, resumes, checkpoints, preemptions, Slurm
job changes) and `metrics.jsonl` (one row per logged step).

Rank 0 and the batch step append; the CLI, the dashboards' mirror and a resuming rank read. A
crash, a kill or a full disk can leave the last line half written. Readers skip a torn line (the
next append closes it and starts a fresh one, so after a resume it may stand mid-file), so a run
that died mid-write can still be shown, followed, mirrored and resumed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def append(log: Path, event: str, /, **fields) -> None:
    append_row(log, {"event": event, "time": time.time(), **fields})


def append_row(log: Path, row: dict) -> None:
    """One JSON line; a line left unterminated by a crash is closed first, so this row stays whole."""
    with log.open("a+b") as out:
        out.seek(0, 2)
        cut_short = False
        if out.tell():
            out.seek(-1, 2)
            cut_short = out.read(1) != b"\n"
        out.write((("\n" if cut_short else "") + json.dumps(row) + "\n").encode())


def read(log: Path) -> list[dict]:
    """Every whole line of a JSON-lines log; torn ones are left out."""
    if not log.exists():
        return []
    return [row for row in map(_parse, log.read_text(errors="replace").splitlines()) if row is not None]


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None
