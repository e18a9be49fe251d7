"""A rank's memory: the peaks of stretches of its life (model construction, engine set-up, each
step, and each phase of the run: `PhasePeaks`), and freed memory handed back to the system where
ZeRO-3 would leave it resident.

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
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from orchestrator.rundir.memory_phases import RankPhaseMemory

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


def _status_bytes(*fields: str) -> dict[str, int]:
    """The fields of /proc/self/status named (reported in kB), from one read; {} without the file. Read
    and written (`_clear_refs`) through bare file descriptors: a lap, twice a micro-batch, costs about
    20 us on a busy 2-core machine, where two pathlib reads and a write took 68."""
    try:
        fd = os.open(STATUS, os.O_RDONLY)
        try:
            text = os.read(fd, 65536).decode()
        finally:
            os.close(fd)
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0]) * 1024
    return found


def _clear_refs() -> None:
    """The resident peak (VmHWM) reset to the resident set now; "5" walks no page tables."""
    try:
        fd = os.open(CLEAR_REFS, os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)
    except OSError:
        pass


class PeakTracker:
    """`lap()` returns the peak bytes since the previous lap (or since it was made): resident host
    memory, or with `device="cuda"` the memory torch allocated on the current GPU."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = device.startswith("cuda")
        self.reset()
        status = _status_bytes("VmRSS", "RssFile")
        self.before_bytes = status.get("VmRSS", 0) - status.get("RssFile", 0)

    def reset(self) -> None:
        """A new stretch starts here."""
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            _clear_refs()

    def lap(self) -> int:
        """The peak less the file-backed pages resident now (they only grow while mapped, so at the
        peak there were no more of them): with `before_bytes` measured alike, growth is the
        anonymous memory the stretch took."""
        if self.cuda:
            import torch

            peak = torch.cuda.max_memory_allocated()
        else:
            status = _status_bytes("VmHWM", "RssFile")
            peak = (status.get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - status.get("RssFile", 0)
        self.reset()
        return peak


class PhasePeaks:
    """A rank's peak memory in each phase of its run (`orchestrator.rundir.memory_phases.PHASES`), the
    largest of the phase's stretches: `begin()` where a phase starts, `end(phase)` where it ends, so
    what runs between phases (logging, the loop's small collectives) is no phase's. The host's
    resident memory always; on a GPU also torch's allocated device memory. Both are bookkeeping the
    host already holds (the kernel's high-water mark, the allocator's counter): a lap syncs no device
    and costs about 20 us on the host (`_status_bytes`): a step of one micro-batch pays 50 us for
    its three, less than its two laps cost before phases were told apart."""

    def __init__(self, device: str = "cpu") -> None:
        self.host = PeakTracker()
        self.device = PeakTracker(device) if device.startswith("cuda") else None
        self.host_bytes: dict[str, int] = {}
        self.device_bytes: dict[str, int] = {}
        self.stretch_bytes = 0
        """The largest phase peak since `begin()`, on the device where there is one: a step's peak."""

    def begin(self) -> None:
        for tracker in (self.host, self.device):
            if tracker:
                tracker.reset()
        self.stretch_bytes = 0

    def end(self, phase: str) -> None:
        peak = host = self.host.lap()
        self.host_bytes[phase] = max(self.host_bytes.get(phase, 0), host)
        if self.device:
            peak = self.device.lap()
            self.device_bytes[phase] = max(self.device_bytes.get(phase, 0), peak)
        self.stretch_bytes = max(self.stretch_bytes, peak)

    def keep(self, earlier: "PhasePeaks") -> None:
        """An engine built again (a rollback to the start): the phases before it count too."""
        for mine, theirs in ((self.host_bytes, earlier.host_bytes), (self.device_bytes, earlier.device_bytes)):
            for phase, peak in theirs.items():
                mine[phase] = max(mine.get(phase, 0), peak)

    def startup(self) -> StartupMemory:
        """The host's figures for construction and set-up, once both have ended."""
        return StartupMemory(self.host.before_bytes, self.host_bytes["construction"], self.host_bytes["setup"])

    def record(self) -> RankPhaseMemory:
        """What this rank sends rank 0 for the run's `memory_phases` event."""
        return RankPhaseMemory(host_before_bytes=self.host.before_bytes, host_bytes=dict(self.host_bytes),
                               device_bytes=dict(self.device_bytes) if self.device else None)


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
