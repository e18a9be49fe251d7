"""The events of `events.jsonl`, typed: one discriminated union on the `event` name of every kind,
each listed here with its fields, but for recovery's (`orchestrator.rundir.recovery_events`), the remote checkpoint tier's
(`orchestrator.rundir.remote_events`) and the memory per phase (`orchestrator.rundir.memory_phases`). The
rows of `metrics.jsonl` and `energy/series.jsonl` are in `orchestrator.rundir.metric_rows`.

Writers build an event (`Resumed(checkpoint=..., step=..., recomputed_steps=...)`) and append it
with `events.append`; readers get these objects back from `RunDir.history()` and match on their
class. Each kind says in `describe()` the line a person sees as it happens (`orch run`,
`orch status --follow`); kinds that say nothing return None.

Histories outlive the code that wrote them, so reading is lenient where it can be: a field added
after a kind's first version, or one a hand-made history leaves out, reads as None (only the
checkpoint's figures, which every reader of a checkpoint uses, are required); fields this version
does not know ride along; and a kind it does not know is kept as an `OtherEvent`, so counting and
resuming over a history written by a later version still work. A row whose known fields are missing
or of the wrong type is no row (`parse_event` returns None) and its log's reader skips it like a
torn line.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union, get_args

from pydantic import Field, TypeAdapter, ValidationError

from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.memory_phases import MemoryPhases
from orchestrator.rundir.remote_events import CheckpointUploaded, CheckpointUploadFailed
from orchestrator.rundir.recovery_events import (AttemptFailed, AttemptStarted, Hang, LossNotRecovered, LossRolledBack, NodeUnhealthy,
                                                 RanksFailed, Straggler)

# -- training (rank 0) ---------------------------------------------------------------------------

class Start(BaseEvent):
    """An attempt began training (`step`: the step it starts from)."""
    event: Literal["start"] = "start"
    step: Optional[int] = None
    world_size: Optional[int] = None
    peak_flops_per_device: Optional[float] = None
    """MFU's denominator, per rank: with it every metric row's MFU can be recomputed."""


class EngineBuilt(BaseEvent):
    """Every rank's measured start-up memory, index = rank."""
    event: Literal["engine_built"] = "engine_built"
    rss_before_bytes: Optional[Union[list[int], int]] = None
    """Before the model was built; earlier versions wrote one event per rank, a number beside a `rank`."""
    construction_peak_bytes: Optional[Union[list[int], int]] = None
    peak_rss_bytes: Optional[Union[list[int], int]] = None

    def describe(self) -> str:
        peaks, befores = (figure if isinstance(figure, list) else [figure] for figure in (self.peak_rss_bytes, self.rss_before_bytes))
        growth = max(peak - before for peak, before in zip(peaks, befores))
        return f"model and engine ready: start-up peaked at {growth / 2**30:.2f} GiB of memory per rank"


class Checkpoint(BaseEvent):
    """A checkpoint committed."""
    event: Literal["checkpoint"] = "checkpoint"
    step: int
    stall_s: float
    bytes: int
    write_s: float
    write_gb_per_s: Optional[float] = None
    path: Optional[str] = None


class CheckpointSetAside(BaseEvent):
    """A checkpoint that failed verification (or a partial save) moved aside before resuming."""
    event: Literal["checkpoint_set_aside"] = "checkpoint_set_aside"
    path: Optional[str] = None
    reason: Optional[str] = None

    def describe(self) -> str:
        return f"set aside {self.path}: {self.reason}"


class Resumed(BaseEvent):
    event: Literal["resumed"] = "resumed"
    checkpoint: Optional[str] = None
    step: Optional[int] = None
    recomputed_steps: Optional[int] = None
    """Steps logged after the checkpoint by the attempt that died, trained again."""

    def describe(self) -> str:
        recomputed = self.recomputed_steps or 0
        return f"resumed from {self.checkpoint} (step {self.step})" + (f"; {recomputed} later steps are recomputed" if recomputed else "")


class ElasticResume(BaseEvent):
    """A resume at another world size, from the universal conversion `orch run` prepared."""
    event: Literal["elastic_resume"] = "elastic_resume"
    checkpoint: Optional[str] = None
    from_world_size: Optional[int] = None
    to_world_size: Optional[int] = None
    consumed_samples: Optional[int] = None


class StartedOver(BaseEvent):
    """No checkpoint to resume from: the rows an earlier attempt logged are dropped and recomputed."""
    event: Literal["started_over"] = "started_over"
    recomputed_steps: Optional[int] = None

    def describe(self) -> str:
        return f"no checkpoint to resume from: starting over ({self.recomputed_steps} logged steps are recomputed)"


class RecipeChangedOnResume(BaseEvent):
    """Recipe changes a resume accepted (those that keep the checkpoint valid)."""
    event: Literal["recipe_changed_on_resume"] = "recipe_changed_on_resume"
    checkpoint: Optional[str] = None
    changes: Optional[list[str]] = None

    def describe(self) -> str:
        return "recipe changes accepted on resume: " + "; ".join(self.changes or [])


class Preempted(BaseEvent):
    """The ranks stopped on a signal, after checkpointing `step` (`saved`: unless no save fitted)."""
    event: Literal["preempted"] = "preempted"
    step: Optional[int] = None
    signal: Optional[int] = None
    saved: Optional[bool] = None

    def describe(self) -> str:
        return f"signal received: checkpointed step {self.step}, stopping"


class ReplicasDiverged(BaseEvent):
    """The data-parallel replicas' parameter digests differ: the run stops."""
    event: Literal["replicas_diverged"] = "replicas_diverged"
    step: Optional[int] = None
    digests: Optional[list[str]] = None


class Completed(BaseEvent):
    event: Literal["completed"] = "completed"
    step: Optional[int] = None


# -- energy (rank 0's account) -------------------------------------------------------------------

class EnergyBudgetWarning(BaseEvent):
    event: Literal["energy_budget_warning"] = "energy_budget_warning"
    used: Optional[float] = None
    budget: Optional[float] = None
    unit: Optional[str] = None
    step: Optional[int] = None

    def describe(self) -> str:
        return f"energy budget: {self.used:.4g} of {self.budget:g} {self.unit} spent"


class EnergyBudgetExceeded(BaseEvent):
    event: Literal["energy_budget_exceeded"] = "energy_budget_exceeded"
    used: Optional[float] = None
    budget: Optional[float] = None
    unit: Optional[str] = None
    step: Optional[int] = None

    def describe(self) -> str:
        return f"energy budget exceeded: {self.used:.4g} of {self.budget:g} {self.unit}; checkpointing and stopping"


class StoppedOverBudget(BaseEvent):
    """The run stopped cleanly on its energy budget, with the bill's totals then."""
    event: Literal["stopped_over_budget"] = "stopped_over_budget"
    step: Optional[int] = None
    kwh: Optional[float] = None
    kgco2e: Optional[float] = None
    saved: Optional[bool] = None


# -- dashboards ----------------------------------------------------------------------------------

class TrackingFailed(BaseEvent):
    """A dashboard sink raised and was dropped; the run went on."""
    event: Literal["tracking_failed"] = "tracking_failed"
    sink: Optional[str] = None
    method: Optional[str] = None
    error: Optional[str] = None

    def describe(self) -> str:
        return f"tracking: {self.sink} failed ({self.error}); dropped, the run goes on (metrics stay in the run directory)"


# -- Slurm (the submitting CLI and the batch step) and sweeps ------------------------------------

JobId = Union[int, str]


class SlurmSubmitted(BaseEvent):
    event: Literal["slurm_submitted"] = "slurm_submitted"
    job_id: Optional[JobId] = None
    kind: Optional[str] = None
    """The job's part: prepare, train, sweep, gate, release."""


class SlurmStart(BaseEvent):
    event: Literal["slurm_start"] = "slurm_start"
    job_id: Optional[JobId] = None
    restart: Optional[int] = None
    nodes: Optional[str] = None
    end_time: Optional[float] = None
    """The end Slurm gave the job (epoch seconds), which the checkpoint policy saves before."""


class SlurmSignal(BaseEvent):
    event: Literal["slurm_signal"] = "slurm_signal"
    job_id: Optional[JobId] = None
    signal: Optional[int] = None


class SlurmRequeued(BaseEvent):
    event: Literal["slurm_requeued"] = "slurm_requeued"
    job_id: Optional[JobId] = None
    restart: Optional[int] = None


class SlurmEnd(BaseEvent):
    event: Literal["slurm_end"] = "slurm_end"
    job_id: Optional[JobId] = None
    exit_code: Optional[int] = None


class CancelRequested(BaseEvent):
    """`orch cancel`, written before the scancel: the batch step then does not requeue."""
    event: Literal["cancel_requested"] = "cancel_requested"
    job_id: Optional[JobId] = None


class StopRequested(BaseEvent):
    event: Literal["stop_requested"] = "stop_requested"
    reason: Optional[str] = None


class Pruned(BaseEvent):
    """A sweep stopped this trial for good after a checkpoint."""
    event: Literal["pruned"] = "pruned"
    step: Optional[int] = None
    reason: Optional[str] = None


class OtherEvent(BaseEvent):
    """A kind this version does not know (written by a later one): kept, with its fields, and silent."""


Event = Annotated[Union[
    Start, EngineBuilt, Checkpoint, CheckpointSetAside, Resumed, ElasticResume, StartedOver, RecipeChangedOnResume, Preempted,
    ReplicasDiverged, Completed, EnergyBudgetWarning, EnergyBudgetExceeded, StoppedOverBudget, TrackingFailed, SlurmSubmitted,
    SlurmStart, SlurmSignal, SlurmRequeued, SlurmEnd, CancelRequested, StopRequested, Pruned, Hang, AttemptFailed, LossRolledBack,
    LossNotRecovered, NodeUnhealthy, AttemptStarted, Straggler, RanksFailed, MemoryPhases, CheckpointUploaded, CheckpointUploadFailed,
], Field(discriminator="event")]

KINDS: dict[str, type[BaseEvent]] = {cls.model_fields["event"].default: cls for cls in get_args(get_args(Event)[0])}
"""Every known kind, by its name in the log."""

_KNOWN = TypeAdapter(Event)


def as_event(event: BaseEvent | dict) -> BaseEvent | None:
    """An event as it is, a log row (a dict) parsed: for callers handed either."""
    return parse_event(event) if isinstance(event, dict) else event


def parse_event(row: dict) -> BaseEvent | None:
    """A log row as its kind's event, an `OtherEvent` for a kind not in `KINDS`; None when it is no
    event (no name, or a known field of the wrong type)."""
    name = row.get("event")
    known = isinstance(name, str) and name in KINDS
    try:
        return _KNOWN.validate_python(row, strict=True) if known else OtherEvent.model_validate(row, strict=True)
    except ValidationError:
        return None
