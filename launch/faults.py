"""Faults injected on purpose, for tests and the bench's fault campaign (and users' own fault drills).

One environment variable, read once by each rank, names them: `ORCH_INJECT_FAULTS`, a
comma-separated list of `KIND@STEP[:OPTION]...`, e.g. `nan@5`, `raise@7:rank1`, `stop@12:save:rank0`,
`nan@5:always`. Kinds:

- `nan`: the step's loss becomes NaN before the backward pass (multiplied by NaN, so the gradients
  and the update are NaN too, as a real overflow or bad batch leaves them);
- `raise`: the rank raises RuntimeError, as a bug or a failed collective does;
- `exit`: the rank ends at once with exit code 1, as a crashed process does (no Python clean-up);
- `stop`: the rank sends itself SIGSTOP, as a stuck collective or a wedged device leaves a process.

Options: `rankN` fires on rank N only (repeat it for several ranks; default every rank); `save`
fires at the start of the step's checkpoint save instead of in the step (not for `nan`);
`always` fires every time the step runs. Without it a fault fires once per run: a restarted attempt,
or a rollback, replays the same step, and a fault meant to be transient must not come back. A
marker in the run directory (`faults/`) records that it fired, written before it fires.

Without the variable a rank holds no faults and each check is one attribute test.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

VARIABLE = "ORCH_INJECT_FAULTS"
KINDS = ("nan", "raise", "exit", "stop")
POINTS = ("step", "save")
FAULT = re.compile(r"(?P<kind>[a-z]+)@(?P<step>\d+)(?P<options>(:[a-z0-9]+)*)")


@dataclass(frozen=True)
class Fault:
    kind: str
    step: int
    point: str = "step"
    ranks: frozenset[int] | None = None
    """None: every rank."""
    always: bool = False

    def applies(self, rank: int, step: int, point: str) -> bool:
        return self.step == step and self.point == point and (self.ranks is None or rank in self.ranks)


def parse(text: str) -> list[Fault]:
    """The faults a value of `ORCH_INJECT_FAULTS` names; ValueError, saying which part is wrong, otherwise."""
    faults = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = FAULT.fullmatch(part)
        if not match or match["kind"] not in KINDS:
            raise ValueError(f"{VARIABLE}: {part!r} is not KIND@STEP[:OPTION]... with KIND one of {', '.join(KINDS)}")
        ranks, point, always = set(), "step", False
        for option in match["options"].split(":")[1:]:
            if option == "always":
                always = True
            elif option in POINTS:
                point = option
            elif re.fullmatch(r"rank\d+", option):
                ranks.add(int(option[4:]))
            else:
                raise ValueError(f"{VARIABLE}: {part!r}: unknown option {option!r} (rankN, save, always)")
        if match["kind"] == "nan" and point == "save":
            raise ValueError(f"{VARIABLE}: {part!r}: a save has no loss to make NaN")
        faults.append(Fault(match["kind"], int(match["step"]), point, frozenset(ranks) if ranks else None, always))
    return faults


class Faults:
    """This rank's injected faults. `fire(step, point)` sets off those due there, and returns whether
    the step's loss must become NaN (the engine applies that, inside its step)."""

    def __init__(self, faults: list[Fault], rank: int, markers: Path):
        self.rank, self.markers = rank, markers
        self.mine = [(index, fault) for index, fault in enumerate(faults) if fault.ranks is None or rank in fault.ranks]

    @classmethod
    def from_env(cls, rank: int, markers: Path, environ: dict[str, str] | None = None) -> "Faults":
        text = (os.environ if environ is None else environ).get(VARIABLE, "")
        return cls(parse(text) if text else [], rank, markers)

    def fire(self, step: int, point: str = "step") -> bool:
        if not self.mine:
            return False
        nan = False
        for index, fault in self.mine:
            if fault.applies(self.rank, step, point) and self._claim(index, fault):
                nan |= self._set_off(fault)
        return nan

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

    def _set_off(self, fault: Fault) -> bool:
        print(f"injected fault: {fault.kind} at step {fault.step} ({fault.point}) on rank {self.rank}", flush=True)
        if fault.kind == "raise":
            raise RuntimeError(f"injected fault ({VARIABLE}): rank {self.rank} raises at step {fault.step}")
        if fault.kind == "exit":
            os._exit(1)
        if fault.kind == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return False
        return True  # nan
