"""What the machine offers, probed once at the CLI edge and handed to the planners as plain data.

Planners never read `os.environ` or probe hardware themselves, so a test can plan for a GPU
cluster on a laptop by building an `EnvSnapshot` by hand.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Dense bf16 tensor-core peaks (FLOP/s) by product name, for time estimates on GPUs.
GPU_BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_bytes: int
    compute_capability: float

    @property
    def peak_flops(self) -> float | None:
        return next((peak for key, peak in GPU_BF16_PEAK_FLOPS.items() if key in self.name), None)


@dataclass(frozen=True)
class EnvSnapshot:
    hostname: str
    cpu_count: int
    memory_bytes: int
    python: str
    cwd: Path
    cache_dir: Path
    free_port: int
    gpus: tuple[GpuInfo, ...] = ()
    cpu_fp16: bool = False
    cpu_matmul_flops: float = 0.0
    """fp32 matmul FLOP/s of all the CPU's cores at once; 0 where not measured."""
    cpu_matmul_source: str = "measured on this machine (a single-threaded worker per core, all at once)"
    cpu_model: str = "unknown"
    memory_in_use_bytes: int = 0
    """Held by whatever runs here now: a CPU run's energy meter bills the whole machine's memory in use."""
    libraries: frozenset[str] = frozenset()
    """The training libraries importable here (found, not imported: importing DeepSpeed takes seconds)."""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


TRAINING_LIBRARIES = ("deepspeed", "horovod")


def probe(measure_cpu: bool = True) -> EnvSnapshot:
    """Look at this machine once. Cheap: no torch import, one nvidia-smi call where it exists."""
    page = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = _probe_gpus()
    cache = Path(os.environ.get("ORCH_CACHE_DIR") or Path.home() / ".cache" / "orchestrator")
    return EnvSnapshot(
        hostname=socket.gethostname(),
        cpu_count=os.cpu_count() or 1,
        memory_bytes=page,
        python=sys.executable,
        cwd=Path.cwd(),
        cache_dir=cache,
        free_port=free_port(),
        gpus=gpus,
        cpu_fp16=_cpu_has_fp16(),
        cpu_model=_cpu_model(),
        memory_in_use_bytes=_memory_in_use(),
        cpu_matmul_flops=_measure_cpu_matmul(os.cpu_count() or 1) if measure_cpu and not gpus else 0.0,
        libraries=frozenset(name for name in TRAINING_LIBRARIES if importlib.util.find_spec(name) is not None),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _probe_gpus() -> tuple[GpuInfo, ...]:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not shutil.which("nvidia-smi"):
        return ()
    query = ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        name, memory_mib, capability = (part.strip() for part in line.split(","))
        gpus.append(GpuInfo(name, int(float(memory_mib)) * 2**20, float(capability)))
    return tuple(gpus)


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def _memory_in_use() -> int:
    """Total less available memory, as the energy meter reads it (psutil's figure, from /proc/meminfo)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return (int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def _cpu_has_fp16() -> bool:
    """fp16 matmuls on CPU need AVX512-FP16 or AMX-FP16; without them DeepSpeed refuses fp16."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_fp16" in flags or "amx_fp16" in flags


def _measure_cpu_matmul(workers: int, size: int = 512, seconds: float = 0.1) -> float:
    """fp32 matmul FLOP/s of the whole CPU as the ranks use it: one single-threaded worker per core,
    all at once (numpy releases the GIL), their rates summed; a fraction of a second.

    Not one multi-threaded BLAS call: its threads wait for each other at every block, so on a busy
    machine one descheduled thread stalls them all. On 2 shared cores that way measured 11 GFLOP/s
    where a worker per core measured 140, and the plan forecast 8 minutes for a 49-second run."""
    import threading

    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    rates = [0.0] * workers

    def work(index: int) -> None:
        rates[index] = matmul_rate(lambda: a @ a, size, seconds)

    with threadpool_limits(1, user_api="blas"):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sum(rates)


def matmul_rate(multiply: Callable[[], object], size: int, seconds: float, warmup: int = 5) -> float:
    """FLOP/s of a square `size` matmul, timed for `seconds` after a few calls that let threads spin up."""
    for _ in range(warmup):
        multiply()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        multiply()
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)
