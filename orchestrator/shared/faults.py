"""What `ORCH_INJECT_FAULTS` names: faults injected on purpose, for tests, the bench's fault campaign
and users' own fault drills.

The value is a comma-separated list of `KIND@STEP[:OPTION]...`, e.g. `nan@5`, `raise@7:rank1`,
`stop@12:save:rank0`, `nan@5:always`. Kinds:

- `nan`: the step's loss becomes NaN before the backward pass (multiplied by NaN, so the gradients
  and the update are NaN too, as a real overflow or bad batch leaves them);
- `spike`: the step's loss is multiplied by `SPIKE_FACTOR` before the backward pass, as an outlier
  batch makes it (what `fault_tolerance.max_loss_spike` catches);
- `raise`: the rank raises RuntimeError, as a bug or a failed collective does;
- `exit`: the rank ends at once with exit code 1, as a crashed process does (no Python clean-up);
- `stop`: the rank sends itself SIGSTOP, as a stuck collective or a wedged device leaves a process;
- `slow`: from that step on, the rank waits `SLOW_S` before each step's batch, as a rank on a slow
  data path or a throttled device makes every step wait for it (what the straggler report names);
  it fires at every step from there, since a straggler stays one.

Options: `rankN` fires on rank N only (repeat it for several ranks; default every rank); `save`
fires at the start of the step's checkpoint save instead of in the step (not for `nan`, `spike`);
`always` fires every time the step runs, where a fault otherwise fires once per run.

Parsed here, where both planes reach it: `orch run` and `orch submit` refuse a malformed value
before anything starts, and each rank sets its faults off (`launch.faults`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VARIABLE = "ORCH_INJECT_FAULTS"
KINDS = ("nan", "spike", "raise", "exit", "stop", "slow")
SLOW_S = 0.2
LOSS_KINDS = ("nan", "spike")
"""The kinds that change the step's loss, which a save has none of."""
SPIKE_FACTOR = 100.0
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
        due = step >= self.step if self.kind == "slow" else step == self.step
        return due and self.point == point and (self.ranks is None or rank in self.ranks)


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
        if match["kind"] == "slow":
            always = True  # every step from there: the marker of a once-per-run fault would stop it at its first
        if match["kind"] in LOSS_KINDS and point == "save":
            raise ValueError(f"{VARIABLE}: {part!r}: a save has no loss to change")
        faults.append(Fault(match["kind"], int(match["step"]), point, frozenset(ranks) if ranks else None, always))
    return faults
