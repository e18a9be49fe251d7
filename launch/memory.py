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
    25 us on a busy 2-core machine, where two pathlib reads and a write took 68."""
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


@dataclass(frozen=True)
class Stretch:
    peak_bytes: int
    grown_bytes: int
    """The peak less what was resident when the stretch began: what the stretch itself took, where
    the peak also counts what earlier stretches left resident."""


class PeakTracker:
    """`lap()` returns the peak since the previous lap or `reset()` (or since it was made): resident
    host memory, or with `device="cuda"` the memory torch allocated on the current GPU."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = device.startswith("cuda")
        self.reset()
        self.before_bytes = self.start_bytes

    def reset(self, resident_bytes: int | None = None) -> None:
        """A new stretch starts here, from `resident_bytes` (read now when not given)."""
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
            return
        if resident_bytes is None:
            status = _status_bytes("VmRSS", "RssFile")
            resident_bytes = status.get("VmRSS", 0) - status.get("RssFile", 0)
        _clear_refs()
        self.start_bytes = resident_bytes

    def lap(self) -> Stretch:
        """The peak less the file-backed pages resident now (they only grow while mapped, so at the
        peak there were no more of them): with `before_bytes` measured alike, growth is the
        anonymous memory the stretch took. The next stretch starts here."""
        resident = None
        if self.cuda:
            import torch

            peak = torch.cuda.max_memory_allocated()
        else:
            status = _status_bytes("VmHWM", "VmRSS", "RssFile")
            files = status.get("RssFile", 0)
            peak = (status.get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - files
            resident = status.get("VmRSS", 0) - files
        stretch = Stretch(peak, max(0, peak - self.start_bytes))  # below 0 only through the mapped files' count
        self.reset(resident)
        return stretch


class PhaseMaxima:
    """One measure's tracker and, per phase, the largest peak and growth of its stretches."""

    def __init__(self, tracker: PeakTracker) -> None:
        self.tracker = tracker
        self.peak_bytes: dict[str, int] = {}
        self.grown_bytes: dict[str, int] = {}

    def end(self, phase: str) -> int:
        """The stretch's peak, once counted for `phase`."""
        stretch = self.tracker.lap()
        self.keep({phase: stretch.peak_bytes}, {phase: stretch.grown_bytes})
        return stretch.peak_bytes

    def keep(self, peak_bytes: dict[str, int], grown_bytes: dict[str, int]) -> None:
        for mine, theirs in ((self.peak_bytes, peak_bytes), (self.grown_bytes, grown_bytes)):
            for phase, value in theirs.items():
                mine[phase] = max(mine.get(phase, value), value)


class PhasePeaks:
    """A rank's peak memory in each phase of its run (`orchestrator.rundir.memory_phases.PHASES`), the
    largest of the phase's stretches, and the most a stretch grew from where it began: `begin()`
    where a phase starts, `end(phase)` where it ends, so what runs between phases (logging, the
    loop's small collectives) is no phase's. The host's resident memory always; on a GPU also
    torch's allocated device memory. Both are bookkeeping the host already holds (the kernel's
    high-water mark, the allocator's counters): a lap syncs no device and costs about 25 us on the
    host, a reset 20 (`_status_bytes`); a step of one micro-batch pays about 80 us for its reset and
    two laps (on a busy 2-core machine), less than its two laps cost (136) before phases were told
    apart."""

    def __init__(self, device: str = "cpu") -> None:
        self.host = PhaseMaxima(PeakTracker())
        self.device = PhaseMaxima(PeakTracker(device)) if device.startswith("cuda") else None
        self.stretch_bytes = 0
        """The largest phase peak since `begin()`, on the device where there is one: a step's peak."""

    def begin(self) -> None:
        for measure in (self.host, self.device):
            if measure:
                measure.tracker.reset()
        self.stretch_bytes = 0

    def end(self, phase: str) -> None:
        peak = self.host.end(phase)
        if self.device:
            peak = self.device.end(phase)
        self.stretch_bytes = max(self.stretch_bytes, peak)

    def keep(self, earlier: "PhasePeaks") -> None:
        """An engine built again (a rollback to the start): the phases before it count too."""
        for mine, theirs in ((self.host, earlier.host), (self.device, earlier.device)):
            if mine and theirs:
                mine.keep(theirs.peak_bytes, theirs.grown_bytes)

    def startup(self) -> StartupMemory:
        """The host's figures for construction and set-up, once both have ended."""
        peaks = self.host.peak_bytes
        return StartupMemory(self.host.tracker.before_bytes, peaks["construction"], peaks["setup"])

    def record(self) -> RankPhaseMemory:
        """What this rank sends rank 0 for the run's `memory_phases` event."""
        device = self.device
        return RankPhaseMemory(host_before_bytes=self.host.tracker.before_bytes, host_bytes=dict(self.host.peak_bytes),
                               host_grown_bytes=dict(self.host.grown_bytes),
                               device_bytes=dict(device.peak_bytes) if device else None,
                               device_grown_bytes=dict(device.grown_bytes) if device else None)


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
