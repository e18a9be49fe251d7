"""The goodput ledger: a run's wall time, over all its attempts and requeues, split into productive
step time and badput by cause.

Both planes compute it with `ledger(history, rows, end)`: rank 0 for the run's summary as it
finishes, `orch status` and `orch report` for a run still going (up to now) or one that died. It is
a pure function of what the run directory records, so the same history always gives the same split.

Where each part comes from (see `Badput` for each cause's definition):
- the metric rows of the steps that count (those an attempt rewound are gone from `metrics.jsonl`):
  productive compute (`compute_s`), the batch fetch (`data_s`) and evaluation (`eval_s`). Each
  logged row carries the sums over the steps since the previous logged row, so a
  `train.log_interval` above 1 loses no step; a row written before those fields existed counts its
  `step_s` once per step it covers.
- the events: checkpoint stalls (`checkpoint.stall_s`), and the timeline of attempts. Attempts are
  told apart by their `start` events; each one's set-up runs from the launch of its node launcher
  (`attempt_started`, or the Slurm job's `slurm_start`) to that `start`.
The remainder (`other`: logging, the replica check, the end-of-run bill, anything unmeasured) makes
the parts add up to the wall time; it is never negative, so where measured parts overlap (they
should not, beyond clock noise) the parts add up to slightly more.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, computed_field, model_validator

from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.recovery_events import AttemptFailed, AttemptStarted, Hang, LossNotRecovered, LossRolledBack
from orchestrator.rundir.rows import (Checkpoint, CheckpointSetAside, Completed, ElasticResume, EngineBuilt, Preempted,
                                      RecipeChangedOnResume, ReplicasDiverged, Resumed, SlurmRequeued, SlurmStart, Start, StartedOver,
                                      StoppedOverBudget)

LAUNCHES = (AttemptStarted, SlurmStart)
"""Where an attempt's clock starts: its node launcher began it, or its Slurm job started."""
STOPS = (Hang, AttemptFailed, Preempted, SlurmRequeued, StoppedOverBudget, LossNotRecovered, ReplicasDiverged, Completed)
"""What ends an attempt's training: the first of these after its `start`."""
SETUP = (*LAUNCHES, EngineBuilt, Resumed, StartedOver, ElasticResume, RecipeChangedOnResume, CheckpointSetAside)
"""What an attempt writes before its `start`: the next attempt's, when they follow another one's last events."""
CLEAN_STOPS = (Preempted, StoppedOverBudget, Completed)
"""Stops after a checkpoint of the last step (unless a preemption says `saved: false`): nothing lost."""


class Badput(BaseModel):
    """Seconds of wall time that trained nothing that counts, by cause."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    startup_s: float = 0.0
    """The first attempt's set-up: from its launch (node launcher or Slurm job) to its first step's start."""
    checkpoint_s: float = 0.0
    """The ranks stalled by checkpoint saves (every committed checkpoint's `stall_s`)."""
    recomputed_s: float = 0.0
    """Training after the last save point (a checkpoint, a rollback, the attempt's start) that a fault or a
    loss rollback threw away, to be trained again."""
    restart_s: float = 0.0
    """From an attempt's end (its fault, its hang's detection, its preemption) to the next attempt's start:
    killing and relaunching the ranks, a Slurm requeue's wait, the set-up and resume again."""
    hang_s: float = 0.0
    """Waiting for hang detection: the watchdog's timeout from the hung rank's last report to the `hang` event."""
    eval_s: float = 0.0
    """Evaluations of the steps that count."""
    data_s: float = 0.0
    """Waiting for batches: the steps' batch fetch, apart from their compute."""
    other_s: float = 0.0
    """The rest of the wall time (logging, the replica check, the final bill, anything unmeasured); never negative."""


CAUSES = tuple(name.removesuffix("_s") for name in Badput.model_fields)


class GoodputLedger(BaseModel):
    """Where a run's wall time went: `productive_s` plus every `badput` cause add up to `wall_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_s: float
    """From the first attempt's launch to the end (the summary, or now for a live run)."""
    productive_s: float
    """The compute of the steps that count, each once."""
    badput: Badput
    energy_kwh: dict[str, float] | None = None
    """IT energy by cause, where the energy bill's phases map onto one (`energy_by_cause`); None without a bill."""

    @computed_field
    @property
    def goodput(self) -> float | None:
        return self.productive_s / self.wall_s if self.wall_s > 0 else None

    def describe(self) -> str:
        """`goodput 62%: 31 s productive of 50 s; badput startup 10 s, restart 6 s, ...` (the causes that took time)."""
        causes = ", ".join(f"{cause} {_seconds(s)}" for cause, s in self.by_cause().items() if s >= 0.05)
        share = f"{self.goodput:.0%}" if self.goodput is not None else "-"
        return f"goodput {share}: {_seconds(self.productive_s)} productive of {_seconds(self.wall_s)}" + (f"; badput {causes}" if causes else "")

    def by_cause(self) -> dict[str, float]:
        """Each cause's seconds, by its short name (`startup`, `checkpoint`, ..., `other`)."""
        return {cause: getattr(self.badput, f"{cause}_s") for cause in CAUSES}

    @model_validator(mode="before")
    @classmethod
    def _derived_again(cls, data):
        """`goodput` is written for the reader's sake and derived again on reading."""
        return {k: v for k, v in data.items() if k != "goodput"} if isinstance(data, dict) else data


ENERGY_OF_CAUSE = {"startup": "startup", "checkpoint": "checkpoint", "restart": "restart", "eval": "eval"}
"""The ledger's causes whose energy is one of the bill's phases (`phases_kwh`), by the same name: the
rank's energy monitor switches phase where the loop starts that part. A later attempt's `startup`
phase is billed as `restart`, as the ledger counts it."""


def energy_by_cause(spent: GoodputLedger, phases_kwh: dict[str, float], recomputed_kwh: float) -> GoodputLedger:
    """The ledger with its energy by cause, from the bill: `productive` is the train phase less the
    recomputed training (`failures_kwh.recomputed`), batch fetch included (data wait has no phase of its
    own); `other` is what the remaining phases hold (idle, ...). A hang's wait has no phase either: the
    monitors of the ranks still running go on sampling in the phase it hung in, so the bill counts it in
    the hung attempt's training after its last save, the recomputed energy; it is taken out of that at
    the training's mean power (`hang_s` x the train phase's kWh over its seconds), since the devices of
    a job that waits on one stopped rank go on drawing about what they drew training."""
    energy = {cause: phases_kwh.get(phase, 0.0) for cause, phase in ENERGY_OF_CAUSE.items()}
    train = phases_kwh.get("train", 0.0)
    recomputed = min(train, recomputed_kwh)
    train_s = spent.productive_s + spent.badput.recomputed_s + spent.badput.hang_s + spent.badput.data_s
    hang = min(recomputed, train * spent.badput.hang_s / train_s) if train_s > 0 else 0.0
    energy |= {"productive": max(0.0, train - recomputed_kwh), "recomputed": recomputed - hang, "hang": hang,
               "other": sum(kwh for phase, kwh in phases_kwh.items() if phase not in {"train", *ENERGY_OF_CAUSE.values()})}
    return spent.model_copy(update={"energy_kwh": energy})


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 100 else f"{s:,.0f} s"


def ledger(history: Sequence[BaseEvent], rows: Sequence[dict], end: float) -> GoodputLedger:
    """The ledger of a run whose history and metric rows these are, its wall time ending at `end`."""
    timed = sorted((e for e in history if e.time is not None), key=lambda e: e.time)
    starts = [i for i, e in enumerate(timed) if isinstance(e, Start)]
    if not starts:
        return GoodputLedger(wall_s=0.0, productive_s=0.0, badput=Badput())
    first = timed[starts[0]]
    launches = [e.time for e in timed[: starts[0]] if isinstance(e, LAUNCHES)]
    began = min(launches, default=first.time)
    # A first attempt that resumed (a checkpoint fetched from object storage, or copied in) trained
    # none of the rows before its start here: their time is not this directory's wall.
    parts = dict(_rows(rows, since=first.step or 0), checkpoint_s=sum(e.stall_s for e in timed if isinstance(e, Checkpoint)),
                 recomputed_s=0.0, restart_s=0.0, hang_s=0.0)
    before_first = _stop_of(timed[: starts[0]])  # attempts that failed in their set-up
    parts["startup_s"] = (before_first.time if before_first else first.time) - began
    if before_first:
        parts["restart_s"] += first.time - before_first.time
    for n, index in enumerate(starts):
        following = starts[n + 1] if n + 1 < len(starts) else len(timed)
        attempt = timed[index:following]
        _attempt(attempt, timed[following].time if following < len(timed) else None, end, parts)
    productive_s = parts.pop("productive_s")
    wall_s = max(0.0, end - began)
    other_s = max(0.0, wall_s - productive_s - sum(parts.values()))
    return GoodputLedger(wall_s=wall_s, productive_s=productive_s, badput=Badput(**parts, other_s=other_s))


def _rows(rows: Sequence[dict], since: int) -> dict[str, float]:
    """Productive compute, batch fetch and evaluation over the metric rows of the steps after `since`."""
    productive = data = evaluation = 0.0
    previous = since
    for row in (r for r in rows if r["step"] > since):
        covered = max(1, row["step"] - previous)
        previous = row["step"]
        if "compute_s" in row:
            productive += row["compute_s"]
            data += row.get("data_s", 0.0)
        else:  # written before the split: the step time, for each step since the previous row
            productive += row.get("step_s", 0.0) * covered
        evaluation += row.get("eval_s", 0.0)
    return {"productive_s": productive, "data_s": data, "eval_s": evaluation}


def _stop_of(events: Iterable[BaseEvent]) -> BaseEvent | None:
    return next((e for e in events if isinstance(e, STOPS)), None)


def _attempt(attempt: list[BaseEvent], next_start: float | None, end: float, parts: dict[str, float]) -> None:
    """Add one attempt's rollbacks, and, once it stopped, its lost training, hang wait and restart (up to
    the next attempt's start, or to `end` while none has started). `attempt` runs from its `start` to
    the next one (exclusive)."""
    saved = attempt[0].time  # the last point training went on from: the start, a checkpoint, a rollback
    for event in attempt[1:]:
        if isinstance(event, LossRolledBack):
            parts["recomputed_s"] += max(0.0, event.time - saved)  # back to the newest checkpoint, or the start
            saved = event.time
        elif isinstance(event, Checkpoint):
            saved = event.time
        elif isinstance(event, STOPS):
            break
    stop = _stop_of(attempt[1:])
    clean = isinstance(stop, CLEAN_STOPS) and getattr(stop, "saved", None) is not False  # `completed` has no `saved`
    if next_start is None:  # the newest attempt: a fault's restart runs until now
        if stop is None or clean:
            return
        next_start = end
    if stop is None:  # no record of how it ended (an earlier version's crash): its last event, then restart
        stop = next((e for e in reversed(attempt) if not isinstance(e, SETUP)), attempt[0])
    hang_s = min(stop.timeout_s or 0.0, stop.time - attempt[0].time) if isinstance(stop, Hang) else 0.0
    if not clean:
        parts["recomputed_s"] += max(0.0, stop.time - hang_s - saved)
    parts["hang_s"] += hang_s
    parts["restart_s"] += max(0.0, next_start - stop.time)

