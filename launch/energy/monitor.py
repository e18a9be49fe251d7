"""The sampler each rank runs beside training: reads its meters in a thread, splits the energy
between the phases the training loop marks, and keeps a record on disk that survives a kill.

The training thread only appends phase marks (a lock and a list append); every meter read and
file write happens in the sampler thread, except `flush()`, which the loop calls at checkpoints
so the bill aggregated there includes every rank's latest figures.

One record file per rank and process lifetime (`energy/parts/<node>/...json`), rewritten
atomically after each sample: a SIGKILL loses at most one interval.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Protocol

from launch.energy.meters import Meter
from orchestrator.shared.filetree import write_file
from orchestrator.rundir.layout import RunDir

HOUR_S = 3600


class Monitor(Protocol):
    def phase(self, name: str, step: int | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class NullMonitor:
    """The monitor of a run with `energy.enabled: false`: the loop marks phases all the same."""

    def phase(self, name: str, step: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class DeviceRecord:
    """One device's energy over one process lifetime, split by phase and by hour of the day."""

    def __init__(self, meter: Meter, node: str, rank: int, start: float):
        self.meter = meter
        self.node, self.rank, self.start, self.end = node, rank, start, start
        self.energy_j: float | None = None if meter.method == "missing" else 0.0
        self.by_phase: dict[str, float] = defaultdict(float)
        self.by_hour: dict[int, float] = defaultdict(float)
        self.train_j_at_save: dict[int, float] = {}

    def add(self, joules: float | None, spans: list[tuple[str, float, int | None]], start: float, end: float) -> None:
        """`spans`: (phase, share of the interval, step whose save begins after it), in order."""
        self.end = end
        if joules is None or self.energy_j is None:
            return
        self.energy_j += joules
        self.by_hour[int((start + end) / 2 // HOUR_S * HOUR_S)] += joules
        for phase, share, saved_step in spans:
            self.by_phase[phase] += joules * share
            if saved_step is not None:
                self.train_j_at_save[saved_step] = self.by_phase["train"]

    def to_json(self, steps: tuple[int | None, int | None]) -> dict:
        m = self.meter
        return {
            "node": self.node, "device": m.device, "kind": m.kind, "method": m.method, "detail": m.detail,
            "rank": self.rank, "pid": os.getpid(), "start": self.start, "end": self.end, "seconds": self.end - self.start,
            "energy_j": self.energy_j, "by_phase": dict(self.by_phase), "by_hour": {str(k): v for k, v in self.by_hour.items()},
            "train_j_at_save": {str(k): v for k, v in self.train_j_at_save.items()},
            "first_step": steps[0], "last_step": steps[1],
        }


class EnergyMonitor:
    def __init__(self, meters: list[Meter], run_dir: Path, node: str, rank: int, interval_s: float,
                 on_sample: Callable[[], None] | None = None, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.started = clock()
        self.records = [DeviceRecord(m, node, rank, self.started) for m in meters]
        self.path = RunDir(run_dir).energy_parts / node / f"rank{rank}-{int(self.started * 1e6)}-{os.getpid()}.json"
        self.interval_s, self.on_sample = interval_s, on_sample
        self._lock = threading.Lock()  # guards the marks and serialises samples (thread vs flush)
        self._marks: list[tuple[float, str, int | None]] = []
        self._phase: tuple[str, int | None] = ("startup", None)
        self._steps: tuple[int | None, int | None] = (None, None)
        self._last_sample = self.started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="energy-monitor", daemon=True)
        self.sample_cpu_s = 0.0  # the sampler's own CPU time, for the overhead benchmark

    def start(self) -> "EnergyMonitor":
        self._write()
        self._thread.start()
        return self

    def phase(self, name: str, step: int | None = None) -> None:
        """Mark the start of a phase. `step` with `train`: the step being trained; with `checkpoint`:
        the step being saved (the record keeps the training energy spent up to that save)."""
        with self._lock:
            self._marks.append((self.clock(), name, step))

    def flush(self) -> None:
        self._sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()
            if self.on_sample:
                self.on_sample()

    def _sample(self) -> None:
        tic = time.thread_time()
        with self._lock:
            now = self.clock()
            marks, self._marks = self._marks, []
            spans = self._spans(marks, now)
            for record in self.records:
                record.add(record.meter.read_j(), spans, self._last_sample, now)
            self._last_sample = now
            self._write()
        self.sample_cpu_s += time.thread_time() - tic

    def _spans(self, marks: list[tuple[float, str, int | None]], now: float) -> list[tuple[str, float, int | None]]:
        """The interval since the last sample cut at each mark: (phase, share of time, saved step)."""
        length = max(now - self._last_sample, 1e-9)
        spans, cursor = [], self._last_sample
        for at, name, step in marks:
            at = min(max(at, cursor), now)
            spans.append((self._phase[0], (at - cursor) / length, step if name == "checkpoint" else None))
            cursor = at
            self._phase = (name, step)
            if name == "train" and step is not None:
                first = self._steps[0] if self._steps[0] is not None else step
                self._steps = (first, step)
        spans.append((self._phase[0], (now - cursor) / length, None))
        return spans

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.path, json.dumps([r.to_json(self._steps) for r in self.records]))
