"""A rank's memory: the peaks of stretches of its life (model construction, engine set-up, each
step), and freed memory handed back to the system where ZeRO-3 would leave it resident.

On a GPU a step's peak is the device's (torch's allocator keeps it and resets it on request). On
the host, Linux keeps a process's peak resident set (VmHWM in /proc/self/status) and resets it when 5 is
written to /proc/self/clear_refs, so each peak read here belongs to its own stretch, not to the
imports before it. Library code and data files mapped in during a stretch (RssFile's growth) are
taken off its peak: they are the libraries', not the model's or the step's, and a rank forked from
its node launcher (launch.spawn) maps in again pages of code the launcher had already touched.
Without those files (not Linux) getrusage's lifetime peak is the nearest bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
from dataclasses import dataclass
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
OWN_MAPPING_BYTES = 64 * 1024


@dataclass(frozen=True)
class StartupMemory:
    before_bytes: int
    """Resident before the model was built (torch, the backend and the data already loaded)."""
    construction_peak_bytes: int
    setup_peak_bytes: int
    """While the engine partitioned the model and allocated its buffers."""


def _status_bytes(field: str) -> int | None:
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    values = [int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":")]  # reported in kB
    return values[0] if values else None


class PeakTracker:
    """`lap()` returns the peak bytes since the previous lap (or since it was made): resident host
    memory, or with `device="cuda"` the memory torch allocated on the current GPU."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = device.startswith("cuda")
        self._reset()
        self.before_bytes = (_status_bytes("VmRSS") or 0) - (_status_bytes("RssFile") or 0)

    def _reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        try:
            CLEAR_REFS.write_text("5")
        except OSError:
            pass

    def lap(self) -> int:
        """The peak less the file-backed pages resident now (they only grow while mapped, so at the
        peak there were no more of them): with `before_bytes` measured alike, growth is the
        anonymous memory the stretch took."""
        if self.cuda:
            import torch

            peak = torch.cuda.max_memory_allocated()
        else:
            peak = (_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - (_status_bytes("RssFile") or 0)
        self._reset()
        return peak


def return_freed_memory() -> bool:
    """From now on, every host allocation of 64 KiB or more is a mapping of its own, returned to the
    system when freed (glibc's `M_MMAP_THRESHOLD`); False where the C library is not glibc.

    ZeRO-3 allocates whole tensors and frees them again all the time: each layer whole during
    partitioned construction, then every layer's gathered parameters in every forward and backward.
    From glibc's heap (where its dynamic threshold sends blocks up to 32 MiB) those freed blocks
    stay resident: a rank ends up holding about a whole model at construction, and half again as
    much as its model states through a step. The cost is a page fault per fresh page of such blocks."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, OWN_MAPPING_BYTES))
