"""How a rank tells its node launcher what it is doing: its phase (set-up, step, checkpoint,
evaluation), the step, since when, and the longest each phase has taken so far.

The launcher's watchdog (`launch.watchdog`) times each rank's current phase against the recipe's
`fault_tolerance.timeouts`. Ranks and their launcher share a node, so the channel is node-local and
costs a system call per report: the launcher makes a directory in /dev/shm (else $TMPDIR; never
the run directory, which may be a shared filesystem) and names it in PROGRESS_DIR_ENV; each rank
overwrites one fixed-size record there with `pwrite`, whose checksum lets the launcher skip one it
read half written. Times are CLOCK_MONOTONIC, which every process on a node shares.

The rank measures its own phases, so the longest is exact however short a step is against the
launcher's polling. Reporting must never fail or slow a rank: an error is swallowed, and a rank
started without the variable (a script, an older launcher) reports nothing.

Each reporting rank also registers faulthandler on STACKS_SIGNAL, writing every thread's stack to a
file beside its record: the watchdog's fallback where py-spy is missing or cannot attach.
"""

from __future__ import annotations

import faulthandler
import math
import os
import signal
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.recovery.spec import PHASES

PROGRESS_DIR_ENV = "ORCH_PROGRESS_DIR"
STACKS_SIGNAL = signal.SIGRTMIN + 5
"""A real-time signal nothing else sends: faulthandler dumps a rank's stacks on it."""

_PAYLOAD = struct.Struct(f"<Bqd{len(PHASES)}d")
_CHECKSUM = struct.Struct("<I")
RECORD_BYTES = _PAYLOAD.size + _CHECKSUM.size


def record_path(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank}.progress"


def stacks_path(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank}.stacks"


@dataclass(frozen=True)
class Report:
    """A rank's last report: in `phase` (of `step`; None in set-up) since `since_s` (monotonic), and
    the longest each phase it has finished took (absent: not finished once yet)."""

    phase: str
    step: int | None
    since_s: float
    longest_s: dict[str, float] = field(default_factory=dict)

    def encode(self) -> bytes:
        payload = _PAYLOAD.pack(PHASES.index(self.phase), -1 if self.step is None else self.step, self.since_s,
                                *(self.longest_s.get(phase, math.nan) for phase in PHASES))
        return payload + _CHECKSUM.pack(zlib.crc32(payload))

    @classmethod
    def decode(cls, record: bytes) -> "Report | None":
        """None for a record read half written (or no record at all)."""
        if len(record) != RECORD_BYTES:
            return None
        payload, (checksum,) = record[:_PAYLOAD.size], _CHECKSUM.unpack(record[_PAYLOAD.size:])
        if zlib.crc32(payload) != checksum:
            return None
        phase, step, since_s, *longest = _PAYLOAD.unpack(payload)
        if phase >= len(PHASES):
            return None
        return cls(PHASES[phase], None if step < 0 else step, since_s,
                   {name: s for name, s in zip(PHASES, longest) if not math.isnan(s)})


def read_report(path: Path) -> Report | None:
    try:
        return Report.decode(path.read_bytes())
    except OSError:
        return None


class Reporter:
    """A rank's side: `report(phase, step)` when a phase begins; the previous one ends then."""

    def __init__(self, directory: Path, rank: int):
        self.fd = os.open(record_path(directory, rank), os.O_WRONLY | os.O_CREAT, 0o600)
        self.stacks = open(stacks_path(directory, rank), "w")
        faulthandler.register(STACKS_SIGNAL, file=self.stacks, all_threads=True)
        self.current: Report | None = None

    def report(self, phase: str, step: int | None) -> None:
        now = time.monotonic()
        longest = dict(self.current.longest_s) if self.current else {}
        if self.current:
            longest[self.current.phase] = max(longest.get(self.current.phase, 0.0), now - self.current.since_s)
        self.current = Report(phase, step, now, longest)
        try:
            os.pwrite(self.fd, self.current.encode(), 0)
        except OSError:
            pass


_reporter: Reporter | None = None


def start_reporting(rank: int) -> None:
    """Report set-up from now on, where the launcher asked for reports (PROGRESS_DIR_ENV); else nothing."""
    global _reporter
    directory = os.environ.get(PROGRESS_DIR_ENV)
    if not directory:
        return
    try:
        _reporter = Reporter(Path(directory), rank)
    except OSError:
        return
    _reporter.report("setup", None)


def report(phase: str, step: int | None = None) -> None:
    """This rank begins `phase` (one of PHASES) of `step`: what the training loop calls."""
    if _reporter is not None:
        _reporter.report(phase, step)
