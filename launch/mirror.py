"""Rank 0's dashboards mirror, in a thread of its own beside training.

The thread opens the sinks (opening a dashboard can take seconds: wandb starts its service
process) and mirrors the run directory every `tracking.interval_s`; training never calls a sink.
Closing makes a last sync and closes the sinks, bounded by `CLOSE_TIMEOUT_S`, so a hung dashboard
cannot hold the job.
"""

from __future__ import annotations

import threading

from orchestrator.rundir.layout import RunDir
from orchestrator.shared.tracking.mirror import Mirror
from orchestrator.shared.tracking.sinks import make_sinks
from orchestrator.tracking.spec import TrackingSpec

CLOSE_TIMEOUT_S = 60.0


class MirrorThread:
    def __init__(self, mirror: Mirror, name: str, config: dict):
        self.mirror = mirror
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(name, config), name="tracking-mirror", daemon=True)
        self._thread.start()

    def _loop(self, name: str, config: dict) -> None:
        self.mirror.open(name, config)
        while not self._stop.wait(self.mirror.spec.interval_s):
            self.mirror.sync()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(CLOSE_TIMEOUT_S)
        finisher = threading.Thread(target=self._finish, daemon=True)
        finisher.start()
        finisher.join(CLOSE_TIMEOUT_S)
        if finisher.is_alive():
            self.mirror.report("tracking", "close", f"the sinks did not finish within {CLOSE_TIMEOUT_S:.0f} s")

    def _finish(self) -> None:
        self.mirror.sync()
        self.mirror.close()


class NullMirror:
    """Ranks other than 0, and runs with no sink chosen."""

    def close(self) -> None:
        """Nothing was opened."""


def start_mirror(spec: TrackingSpec, run: RunDir, name: str, config: dict) -> MirrorThread | NullMirror:
    """Rank 0's mirror, opened and syncing in its own thread; a null one when no sink is chosen."""
    if not spec.any:
        return NullMirror()
    return MirrorThread(Mirror(run, spec, make_sinks(spec)), name, config)
