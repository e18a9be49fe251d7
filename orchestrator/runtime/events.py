"""`events.jsonl`: the run's history (starts, resumes, checkpoints, set-aside checkpoints, preemptions),
appended by rank 0 and read by the CLI, the goodput figure and, later, the dashboards."""

from __future__ import annotations

import json
import time
from pathlib import Path


def append(log: Path, event: str, /, **fields) -> None:
    with log.open("a") as out:
        out.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
