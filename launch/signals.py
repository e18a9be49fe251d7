"""Preemption signals: a handler only sets a flag; the training loop acts on it at a step boundary.

Saving inside a signal handler can deadlock (locks held by the interrupted code) or tear files,
so the first SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 only records the request. The ranks agree on it
collectively at the next optimizer-step boundary, checkpoint together and exit with EXIT_REQUEUE.
A second signal exits at once: commits are atomic, so nothing committed is harmed. The same
signal can reach a rank twice within milliseconds along two paths (Slurm signals every process of
a step, and the node launcher forwards too), so repeats within DUPLICATE_WINDOW_S count as one.
"""

from __future__ import annotations

import os
import signal
import time

from orchestrator.rundir.entry import FORWARDED_SIGNALS

DUPLICATE_WINDOW_S = 1.0


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.first_at = 0.0

    def install(self) -> "StopFlag":
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum, self.first_at = signum, time.monotonic()
        elif time.monotonic() - self.first_at > DUPLICATE_WINDOW_S:
            os._exit(128 + signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None
