"""The peak resident memory of a rank's start-up: model construction, then engine set-up.

Linux keeps a process's peak resident set (VmHWM in /proc/self/status) and resets it when 5 is
written to /proc/self/clear_refs, so each peak read here belongs to its own stretch, not to the
imports before it. Without those files (not Linux) getrusage's lifetime peak is the nearest bound.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class StartupMemory:
    before_bytes: int
    """Resident before the model was built (torch, the backend and the data already loaded)."""
    construction_peak_bytes: int
    setup_peak_bytes: int
    """While the engine partitioned the model and allocated its buffers."""

    @property
    def growth_bytes(self) -> int:
        return max(self.construction_peak_bytes, self.setup_peak_bytes) - self.before_bytes


def _status_bytes(field: str) -> int | None:
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    values = [int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":")]  # reported in kB
    return values[0] if values else None


class PeakTracker:
    """`lap()` returns the peak resident bytes since the previous lap (or since it was made)."""

    def __init__(self) -> None:
        self._reset()
        self.before_bytes = _status_bytes("VmRSS") or 0

    @staticmethod
    def _reset() -> None:
        try:
            CLEAR_REFS.write_text("5")
        except OSError:
            pass

    def lap(self) -> int:
        peak = _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._reset()
        return peak
