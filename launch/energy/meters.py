"""Meters: one per physical device a rank owns, each saying how its figure is obtained.

A rank owns its own GPU (by NVML UUID); the node's local leader (local rank 0) owns the CPU
packages and the memory. Nobody else reads them, so the node's figure does not grow with the
number of ranks on it. Each meter's `read_j()` returns the energy since its previous call.

Methods, best first: `counter` (a hardware energy counter: NVML total energy, RAPL),
`integrated` (NVML power samples integrated over time), `estimated` (TDP x load curve, W per
GiB in use), and `missing`, which returns None with a reason instead of a zero.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from orchestrator.shared.energy.hardware import CpuPower, cpu_load_power_w

POWERCAP_ROOT = Path("/sys/class/powercap")


class Meter(Protocol):
    device: str
    kind: str  # gpu | cpu | memory
    method: str  # counter | integrated | estimated | missing
    detail: str  # the counter's name, the estimate's inputs, or why the figure is missing

    def read_j(self) -> float | None: ...


class PowerIntegrator:
    """Trapezoidal integration of power samples (W) taken at irregular times."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last: tuple[float, float] | None = None

    def add(self, watts: float) -> float:
        """Joules between the previous sample and this one (0 for the first)."""
        now = self.clock()
        joules = 0.0 if self.last is None else (now - self.last[0]) * (watts + self.last[1]) / 2
        self.last = (now, watts)
        return joules


@dataclass
class MissingMeter:
    device: str
    kind: str
    detail: str
    method: str = "missing"

    def read_j(self) -> None:
        return None


class CounterMeter:
    """A monotonically increasing hardware counter that may wrap (RAPL) at `wrap` units."""

    def __init__(self, device: str, kind: str, detail: str, read: Callable[[], float], joules_per_unit: float, wrap: float | None = None):
        self.device, self.kind, self.detail, self.method = device, kind, detail, "counter"
        self._read, self._scale, self._wrap = read, joules_per_unit, wrap
        self._last = read()

    def read_j(self) -> float:
        value = self._read()
        delta = value - self._last
        if delta < 0 and self._wrap:
            delta += self._wrap
        self._last = value
        return max(delta, 0.0) * self._scale


class PowerMeter:
    """A power reading (W), measured (`integrated`) or modelled (`estimated`), integrated over time."""

    def __init__(self, device: str, kind: str, method: str, detail: str, watts: Callable[[], float]):
        self.device, self.kind, self.method, self.detail = device, kind, method, detail
        self._watts = watts
        self._integrator = PowerIntegrator()
        self._integrator.add(watts())

    def read_j(self) -> float:
        return self._integrator.add(self._watts())


# -- GPUs ---------------------------------------------------------------------------------------


def gpu_meter(nvml, local_rank: int, visible: str | None) -> Meter:
    """The GPU this rank uses. `nvml` is the `pynvml` module (nvidia-ml-py) or an object with the same
    functions; `visible` is CUDA_VISIBLE_DEVICES, which maps local rank to a physical GPU."""
    try:
        nvml.nvmlInit()
        entries = visible.split(",") if visible else None
        entry = entries[local_rank].strip() if entries else str(local_rank)
        handle = nvml.nvmlDeviceGetHandleByUUID(entry) if entry.startswith("GPU-") else nvml.nvmlDeviceGetHandleByIndex(int(entry))
        uuid = nvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    except Exception as exc:  # NVMLError and its many subclasses, or a bad CUDA_VISIBLE_DEVICES
        return MissingMeter(f"gpu:local-{local_rank}", "gpu", f"NVML unavailable: {exc}")
    device = f"gpu:{uuid}"
    try:
        return CounterMeter(device, "gpu", "NVML total energy counter", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle), 1e-3)
    except nvml.NVMLError:
        pass  # pre-Volta GPUs have no energy counter: integrate power samples instead
    try:
        return PowerMeter(device, "gpu", "integrated", "NVML power samples", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
    except nvml.NVMLError as exc:
        return MissingMeter(device, "gpu", f"NVML has neither an energy counter nor power readings for this GPU: {exc}")


# -- CPU and memory (the node's local leader) ---------------------------------------------------


def rapl_meters(root: Path = POWERCAP_ROOT) -> tuple[list[Meter], str | None]:
    """Counters for every RAPL package (CPU) and DRAM domain; or none and the reason."""
    if not root.is_dir():
        return [], f"RAPL not readable: {root} absent (a VM or container without powercap)"
    meters: list[Meter] = []
    for zone in sorted(root.glob("intel-rapl:*")):
        name_file, energy_file = zone / "name", zone / "energy_uj"
        try:
            name = name_file.read_text().strip()
            wrap = float((zone / "max_energy_range_uj").read_text())
            float(energy_file.read_text())
        except (OSError, ValueError) as exc:
            return [], f"RAPL not readable: {exc}"
        kind = "memory" if name == "dram" else "cpu" if name.startswith("package") else None
        if kind is None:
            continue  # core/uncore are parts of a package, already in its figure
        label = zone.name.removeprefix("intel-rapl:")
        meters.append(CounterMeter(f"{kind}:rapl-{label}", kind, f"RAPL {name}", lambda f=energy_file: float(f.read_text()), 1e-6, wrap))
    if not any(m.kind == "cpu" for m in meters):
        return [], f"RAPL not readable: no package domain under {root}"
    return meters, None


class CpuLoad:
    """Whole-machine CPU busy fraction since the previous call, from /proc/stat (via psutil)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._last = psutil.cpu_times()

    def fraction(self) -> float:
        now = self._psutil.cpu_times()
        total = _total(now) - _total(self._last)
        busy = total - (now.idle - self._last.idle) - (getattr(now, "iowait", 0) - getattr(self._last, "iowait", 0))
        self._last = now
        return min(max(busy / total, 0.0), 1.0) if total > 0 else 0.0


def _total(times) -> float:
    return sum(times) - getattr(times, "guest", 0) - getattr(times, "guest_nice", 0)


def memory_in_use_gib() -> float:
    import psutil

    memory = psutil.virtual_memory()
    return (memory.total - memory.available) / 2**30


def node_meters(cpu: CpuPower, memory_w_per_gib: float, powercap_root: Path = POWERCAP_ROOT) -> list[Meter]:
    """The local leader's meters: RAPL counters where readable, else estimates that say why."""
    counters, reason = rapl_meters(powercap_root)
    meters = list(counters)
    why = f"; {reason}" if reason else ""
    if not any(m.kind == "cpu" for m in meters):
        load = CpuLoad()
        meters.append(PowerMeter("cpu", "cpu", "estimated", f"TDP {cpu.tdp_w:g} W ({cpu.source}) x load curve{why}",
                                 lambda: cpu_load_power_w(cpu.tdp_w, load.fraction())))
    if not any(m.kind == "memory" for m in meters):
        memory_why = "; no RAPL DRAM domain" if not reason else why
        meters.append(PowerMeter("memory", "memory", "estimated", f"{memory_w_per_gib:g} W per GiB in use{memory_why}",
                                 lambda: memory_w_per_gib * memory_in_use_gib()))
    return meters


def rank_meters(
    local_rank: int, uses_gpu: bool, cpu: CpuPower, memory_w_per_gib: float, nvml_loader: Callable[[], object] | None = None
) -> list[Meter]:
    """Exactly the devices this rank owns."""
    meters: list[Meter] = []
    if uses_gpu:
        try:
            nvml = (nvml_loader or _import_pynvml)()
        except ImportError as exc:
            meters.append(MissingMeter(f"gpu:local-{local_rank}", "gpu", f"nvidia-ml-py not importable: {exc}"))
        else:
            meters.append(gpu_meter(nvml, local_rank, os.environ.get("CUDA_VISIBLE_DEVICES")))
    if local_rank == 0:
        meters += node_meters(cpu, memory_w_per_gib)
    return meters


def _import_pynvml():
    import pynvml

    return pynvml
