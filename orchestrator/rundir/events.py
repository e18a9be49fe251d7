"""The append-only logs of a run: `events.jsonl` (starts, resumes, checkpoints, preemptions, Slurm
job changes) and `metrics.jsonl` (one row per logged step).

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
from dataclasses import dataclass, field
from pathlib import Path

Kind = type | tuple[type, ...]
_NUMBER = (int, float)


@dataclass(frozen=True)
class RowShape:
    """The fields a log's readers index without looking: `required` ones must be there, `typed` ones
    are of their type where given, and an event named in `by_event` carries that event's fields."""

    required: dict[str, Kind]
    typed: dict[str, Kind]
    by_event: dict[str, dict[str, Kind]] = field(default_factory=dict)

    def fits(self, row: dict) -> bool:
        return (all(_is(row.get(key), kind) for key, kind in self.required.items())
                and all(key not in row or _is(row[key], kind) for key, kind in self.typed.items())
                and all(_is(row.get(key), kind) for key, kind in self.by_event.get(row.get("event"), {}).items()))


def _is(value, kind: Kind) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON's true is no step and no loss


METRIC_ROW = RowShape(required={"step": int},
                      typed={key: _NUMBER for key in ("loss", "val_loss", "lr", "tokens_per_s", "step_s", "energy_kwh")})
EVENT = RowShape(required={"event": str}, typed={"time": _NUMBER, "step": int},
                 by_event={"checkpoint": {"step": int, "stall_s": _NUMBER, "write_s": _NUMBER, "bytes": int}})


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


def read(log: Path, shape: RowShape | None = None) -> list[dict]:
    """Every whole line of a JSON-lines log that is an object (of `shape`, if given); torn ones and
    any other line are left out."""
    if not log.exists():
        return []
    rows = (_parse(line) for line in log.read_text(errors="replace").splitlines())
    return [row for row in rows if row is not None and (shape is None or shape.fits(row))]


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) else None
