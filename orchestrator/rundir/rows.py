"""Every row the run's JSON-lines logs hold, typed: the events of `events.jsonl` (one discriminated
union on the `event` name, every kind listed here with its fields), the metric rows of
`metrics.jsonl` and the points of `energy/series.jsonl`.

Writers build an event (`Resumed(checkpoint=..., step=..., recomputed_steps=...)`) and append it
with `events.append`; readers get these objects back from `RunDir.history()` and match on their
class. Metric rows stay plain dicts (a `TypedDict`), since scripts read and rewrite that log. Each
kind says in `describe()` the line a person sees as it happens (`orch run`, `orch status --follow`);
kinds that say nothing return None.

Histories outlive the code that wrote them, so reading is lenient where it can be: a field added
after a kind's first version, or one a hand-made history leaves out, reads as None (only the
checkpoint's figures, which every reader of a checkpoint uses, are required); fields this version
does not know ride along; and a kind it does not know is kept as an `OtherEvent`, so counting and
resuming over a history written by a later version still work. A row whose known fields are missing
or of the wrong type is no row (`parse_*` returns None) and its log's reader skips it like a torn
line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union, get_args

from typing_extensions import Required, TypedDict

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

class BaseEvent(BaseModel):
    """What every event has: its kind's name and the time it was written. Read strictly (a JSON `true`
    is no step, "3" no count); built leniently by the writers (a numpy figure is a number). Events also
    read by key (`e["step"]`, `e.get("job_id")`, `"saved" in e`) for scripts, benchmarks and tests
    that handle them as the JSON objects they are on disk."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: str
    time: Optional[float] = None
    """Seconds since the epoch; `events.append` stamps it when the event is written."""

    def describe(self) -> str | None:
        """The line a person watching the run sees for this event; None for most kinds."""
        return None

    def line(self) -> dict:
        """The fields given (with the name and time first), as written: a reader tells a field an
        earlier version did not write from one written as null."""
        rest = self.model_dump(mode="json", exclude_unset=True, exclude={"event", "time"})
        return {"event": self.event, "time": self.time, **rest}

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields and key not in (self.model_extra or {}):
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __contains__(self, key: str) -> bool:
        return key in ("event", "time") or key in self.model_fields_set or key in (self.model_extra or {})

    def keys(self):
        return self.line().keys()

    def items(self):
        return self.line().items()


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


# -- recovery (the node launchers) ---------------------------------------------------------------

class AttemptStarted(BaseEvent):
    """A node launcher (node 0's) began an attempt, before starting its ranks: the goodput ledger's
    start-up runs from here to the attempt's `start`."""
    event: Literal["attempt_started"] = "attempt_started"
    attempt: Optional[int] = None


FailureClass = Literal["crash", "hang", "oom", "nan", "preempted", "cancelled", "node_unhealthy"]
"""Why an attempt ended short of completion, as `orch status`, the report and the trackers name it."""


class Hang(BaseEvent):
    """A node launcher's watchdog found ranks past their phase's timeout: it wrote every local rank's
    stacks under `stacks` (relative to the run directory) and ended the attempt's ranks."""
    event: Literal["hang"] = "hang"
    node: Optional[int] = None
    attempt: Optional[int] = None
    phase: Optional[str] = None
    step: Optional[int] = None
    timeout_s: Optional[float] = None
    stopped_ranks: Optional[list[int]] = None
    """The ranks that stopped reporting first: the ones furthest behind (lowest step, then earliest phase
    of it; where several tie, those the kernel shows stopped)."""
    stacks: Optional[str] = None

    def describe(self) -> str:
        ranks = ", ".join(map(str, self.stopped_ranks or [])) or "?"
        timeout = f" (timeout {self.timeout_s:.0f} s)" if self.timeout_s is not None else ""
        return f"hang: rank(s) {ranks} stopped reporting in {phase_of_step(self.phase, self.step)}{timeout}; stacks in {self.stacks}"


def phase_of_step(phase: str | None, step: int | None) -> str:
    """Where a rank was, in words: "set-up", "step 12", "checkpoint of step 12"."""
    if phase == "setup" or step is None:
        return "set-up" if phase in ("setup", None) else phase
    return f"step {step}" if phase == "step" else f"{phase} of step {step}"


class AttemptFailed(BaseEvent):
    """An attempt ended on a fault, classified; `restarting` says whether the run goes on by itself."""
    event: Literal["attempt_failed"] = "attempt_failed"
    attempt: Optional[int] = None
    failure: Optional[FailureClass] = None
    detail: Optional[str] = None
    ranks: Optional[list[int]] = None
    nodes: Optional[list[str]] = None
    """The nodes of those ranks, where the Slurm batch step knows them (a node named twice is left out)."""
    restarting: Optional[bool] = None
    restarts: Optional[int] = None
    """In-job restarts so far within the window, this one included when `restarting`."""
    max_restarts: Optional[int] = None
    evidence: Optional[str] = None
    """Where to look, relative to the run directory: the failed rank's log, or a hang's stacks."""
    no_restart: Optional[str] = None
    """Why the run does not restart by itself (None when `restarting`)."""

    def describe(self) -> str:
        what = f"attempt {self.attempt} failed: {self.failure} ({self.detail}{f'; see {self.evidence}' if self.evidence else ''})"
        if self.restarting:
            return f"{what}; restart {self.restarts} of {self.max_restarts} from the newest verified checkpoint"
        return f"{what}; {self.no_restart or f'no restart left ({self.restarts} of {self.max_restarts} used)'}"


class LossRolledBack(BaseEvent):
    """A non-finite loss (or one past `fault_tolerance.max_loss_spike` x its recent median): the ranks
    went back to the checkpoint at `checkpoint_step` instead of training on it."""
    event: Literal["loss_rolled_back"] = "loss_rolled_back"
    step: Optional[int] = None
    loss: Optional[float] = None
    problem: Optional[str] = None
    """"non-finite", or the spike against the median."""
    checkpoint_step: Optional[int] = None
    """0: no checkpoint yet, the ranks started over from their initial state."""
    data_position: Optional[str] = None
    recomputed_steps: Optional[int] = None
    """Steps logged after the checkpoint, trained again."""

    def describe(self) -> str:
        return f"loss {self.loss} at step {self.step} ({self.data_position}): rolled back to step {self.checkpoint_step}"


class LossNotRecovered(BaseEvent):
    """The loss went bad again at a data position it had already rolled back from (the data, not a
    transient fault), or with nothing to roll back to: the ranks stopped (exit `EXIT_NAN`)."""
    event: Literal["loss_not_recovered"] = "loss_not_recovered"
    step: Optional[int] = None
    loss: Optional[float] = None
    problem: Optional[str] = None
    data_position: Optional[str] = None
    rolled_back_to: Optional[int] = None
    """The step the first rollback from this position went back to; None: there was no checkpoint."""

    def describe(self) -> str:
        again = f"again after rolling back to step {self.rolled_back_to}" if self.rolled_back_to is not None else "with nothing to roll back to"
        return f"loss {self.loss} at step {self.step} ({self.data_position}) {again}: training stopped"


class Straggler(BaseEvent):
    """The ranks whose own time per step (data wait + compute) exceeded `ratio` x the others' median
    over the last window (`launch.stragglers`); written when that set changes, an empty one when
    they caught up. `per_rank`: each rank's median data wait, compute and time blocked in
    collectives, in seconds."""
    event: Literal["straggler"] = "straggler"
    step: Optional[int] = None
    ranks: Optional[list[int]] = None
    ratio: Optional[float] = None
    window_steps: Optional[int] = None
    per_rank: Optional[list[list[float]]] = None

    def describe(self) -> str:
        if not self.ranks:
            return f"stragglers: none any more at step {self.step}"
        splits = self.per_rank or []
        own = [sum(split[:2]) for split in splits]
        named = []
        for rank in self.ranks:
            others = sorted(own[:rank] + own[rank + 1:])
            middle = others[len(others) // 2] if others else 0.0
            data, compute, _ = splits[rank]
            named.append(f"rank {rank} ({own[rank] / middle if middle else float('inf'):.1f}x the others' own time per step: "
                         f"data {data:.3f} s, compute {compute:.3f} s)")
        return f"straggler at step {self.step}: " + "; ".join(named)


class NodeUnhealthy(BaseEvent):
    """Nodes failed the batch step's health check before the ranks started (`orchestrator.slurm.preflight`);
    `excluded`: the job was requeued without them."""
    event: Literal["node_unhealthy"] = "node_unhealthy"
    job_id: Optional[Union[int, str]] = None
    problems: Optional[dict[str, list[str]]] = None
    """By node name."""
    excluded: Optional[bool] = None
    replaced: Optional[bool] = None
    """The job went on without them, on spare nodes of its allocation (`fault_tolerance.spare_nodes`)."""

    def describe(self) -> str:
        found = "; ".join(f"{node}: {', '.join(p)}" for node, p in (self.problems or {}).items())
        then = "on spare nodes" if self.replaced else "requeued without them" if self.excluded else "no job retry left"
        return f"unhealthy node(s) {found}; {then}"


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
    LossNotRecovered, NodeUnhealthy, AttemptStarted, Straggler,
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


# -- metrics.jsonl and energy/series.jsonl -------------------------------------------------------

class MetricRow(TypedDict, total=False):
    """One logged step (rank 0): a plain dict, as scripts read and rewrite the log, with its known
    figures typed. A figure is absent or a number, never null (readers format it); `grad_norm` and
    `mfu` are null where the backend or device gives none. A mixture adds each source's samples this
    step as `samples/<source>`."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    step: Required[int]
    loss: float
    val_loss: float
    """Only on the steps that evaluated."""
    lr: float
    grad_norm: Optional[float]
    tokens: int
    tokens_per_s: float
    mfu: Optional[float]
    step_s: float
    """The step's batch fetch and compute (not its evaluation)."""
    compute_s: float
    """The compute of the steps since the previous logged row, this one included (`train.log_interval`
    steps, fewer after a resume): with `data_s`, what the goodput ledger counts."""
    data_s: float
    """The batch fetch of the same steps."""
    eval_s: float
    """Only on the steps that evaluated: how long the evaluation took."""
    peak_memory_bytes: Optional[int]
    energy_kwh: float
    """The whole run's IT kWh as of rank 0's last aggregation, when energy is measured."""
    param_digest: str


class SeriesPoint(BaseModel):
    """Each node's energy so far, and its power since the previous point (`energy/series.jsonl`):
    per node, `kwh` and the mean `power_w`, `cpu_w`, `memory_w`, `gpu:<uuid>_w` where measured."""

    model_config = ConfigDict(frozen=True)

    time: float
    step: int
    kwh: float
    nodes: dict[str, dict[str, float]]

    @model_validator(mode="after")
    def _each_node_has_its_energy(self) -> "SeriesPoint":
        if any("kwh" not in figures for figures in self.nodes.values()):
            raise ValueError("a node without its kwh")
        return self


_METRIC_ROW = TypeAdapter(MetricRow)


def parse_metric_row(row: dict) -> MetricRow | None:
    try:
        return _METRIC_ROW.validate_python(row, strict=True)
    except ValidationError:
        return None


def parse_series_point(row: dict) -> SeriesPoint | None:
    try:
        return SeriesPoint.model_validate(row, strict=True)
    except ValidationError:
        return None
