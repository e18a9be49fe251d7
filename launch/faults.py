"""Faults injected on purpose, set off in each rank: what `ORCH_INJECT_FAULTS` names
(`orchestrator.shared.faults` has its format), read once per rank.

A fault fires once per run unless `always`: a restarted attempt, or a rollback, replays the same
step, and a fault meant to be transient must not come back. A marker in the run directory
(`faults/`), written before the fault fires, records that it fired.

Without the variable a rank holds no faults and each check is one attribute test.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

from orchestrator.shared.faults import SLOW_S, SPIKE_FACTOR, VARIABLE, Fault, parse


class Faults:
    """This rank's injected faults. `fire(step, point)` sets off those due there, and returns what the
    step's loss must be multiplied by, if anything (the engine applies it, before the backward pass)."""

    def __init__(self, faults: list[Fault], rank: int, markers: Path):
        self.rank, self.markers = rank, markers
        self.mine = [(index, fault) for index, fault in enumerate(faults) if fault.ranks is None or rank in fault.ranks]

    @classmethod
    def from_env(cls, rank: int, markers: Path, environ: dict[str, str] | None = None) -> "Faults":
        text = (os.environ if environ is None else environ).get(VARIABLE, "")
        return cls(parse(text) if text else [], rank, markers)

    def fire(self, step: int, point: str = "step") -> float | None:
        if not self.mine:
            return None
        fired = [self._set_off(fault, step) for index, fault in self.mine if fault.applies(self.rank, step, point) and self._claim(index, fault)]
        factors = [factor for factor in fired if factor is not None]
        return math.prod(factors) if factors else None

    def _claim(self, index: int, fault: Fault) -> bool:
        """Whether the fault fires now: always for `always`, else only if no earlier attempt fired it."""
        if fault.always:
            return True
        marker = self.markers / f"{index}-{fault.kind}@{fault.step}-{fault.point}.rank{self.rank}"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{VARIABLE} fault {index} fired on rank {self.rank} at step {fault.step} ({fault.point})\n")
        return True

    def _set_off(self, fault: Fault, step: int) -> float | None:
        if step == fault.step:  # a slow rank's fault goes on firing: said once
            print(f"injected fault: {fault.kind} at step {fault.step} ({fault.point}) on rank {self.rank}", flush=True)
        if fault.kind == "raise":
            raise RuntimeError(f"injected fault ({VARIABLE}): rank {self.rank} raises at step {fault.step}")
        if fault.kind == "exit":
            os._exit(1)
        if fault.kind == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return None
        if fault.kind == "slow":
            time.sleep(SLOW_S)
            return None
        return math.nan if fault.kind == "nan" else SPIKE_FACTOR
