"""The mirror: copies what the run directory records into the dashboards.

Rank 0 runs it in a thread (`launch.mirror`) that reads the run directory (new metric rows, new
events, the energy series) every `tracking.interval_s` and sends what is new to each sink; `orch
gate` and `orch release` open it once to add their results. Where it got to is kept in
`tracking.json` with the ids the sinks gave (wandb run id, MLflow run id), so a requeued or
resumed run continues the same dashboard runs and never logs a step twice (steps recomputed after
a resume were already logged, with the same values when resume is exact). At the end, the
summary's goodput ledger goes with the `completed` event.

A sink that raises is reported once (rank 0's log, a `tracking_failed` event) and dropped; the
others go on, and the run directory keeps everything. Training never waits for a sink: they are
only called from the mirror's thread, and closing it waits a bounded time.
"""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator.shared.redact import redact_tree
from orchestrator.rundir import events
from orchestrator.rundir.checkpoint_records import RunSummary, read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import PlanRecord, read_tracking, write_tracking
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.recovery_events import AttemptFailed, Hang, LossNotRecovered, LossRolledBack, NodeUnhealthy, Straggler
from orchestrator.rundir.rows import (Checkpoint, Completed, EnergyBudgetExceeded, Preempted, Resumed, StoppedOverBudget, TrackingFailed,
                                      as_event)
from orchestrator.shared.tracking.sinks import RunIdentity, Sink, make_sinks
from orchestrator.tracking.spec import TrackingSpec

ROW_KEYS = ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_s", "eval_s", "energy_kwh")


class GuardedSink:
    """Calls a sink until it fails once; then reports it and stops calling it."""

    def __init__(self, sink: Sink, report):
        self.sink, self.report = sink, report
        self.name = getattr(sink, "name", type(sink).__name__)
        self.failed: str | None = None

    def call(self, method: str, *args):
        if self.failed:
            return None
        try:
            return getattr(self.sink, method)(*args)
        except Exception as exc:  # any library's error: the run must go on
            self.failed = f"{type(exc).__name__}: {exc}"[:300]
            self.report(self.name, method, self.failed)
            return None


def event_metrics(event: BaseEvent | dict) -> dict[str, float]:
    """The scalars an event (or a log row) contributes, by name."""
    event = as_event(event)
    if isinstance(event, Checkpoint):
        return {"checkpoint/stall_s": event.stall_s, "checkpoint/bytes": event.bytes, "checkpoint/write_s": event.write_s}
    if isinstance(event, Resumed):
        return {"restarts/resumed_from_step": event.step, "restarts/recomputed_steps": event.recomputed_steps or 0}
    if isinstance(event, Preempted):
        return {"restarts/preempted": 1.0}
    if isinstance(event, LossRolledBack):
        return {"faults/loss_rolled_back_to_step": event.checkpoint_step, "restarts/recomputed_steps": event.recomputed_steps or 0}
    if isinstance(event, LossNotRecovered):
        return {"faults/loss_not_recovered": 1.0}
    if isinstance(event, (StoppedOverBudget, EnergyBudgetExceeded)):
        return {"energy/budget_exceeded": 1.0}
    if isinstance(event, AttemptFailed):  # the failure class as a count, so a dashboard can sum each over runs
        return {f"faults/{event.failure or 'crash'}": 1.0, "restarts/in_job": float(bool(event.restarting))}
    if isinstance(event, Hang):
        return {"faults/hang_timeout_s": event.timeout_s or 0.0, "faults/hang_stopped_ranks": float(len(event.stopped_ranks or []))}
    if isinstance(event, Straggler):
        return {"faults/stragglers": float(len(event.ranks or []))}
    if isinstance(event, NodeUnhealthy):
        return {"faults/node_unhealthy": float(len(event.problems or {}))}
    return {}


def ledger_metrics(summary: RunSummary | None) -> dict[str, float]:
    """The summary's goodput ledger as scalars: `goodput/goodput`, `goodput/wall_s`, `goodput/productive_s`,
    `goodput/badput/<cause>_s`, `goodput/energy/<cause>_kwh` (none from a summary written before the ledger)."""
    spent = summary.ledger if summary else None
    if spent is None:
        return {}
    return {"goodput/goodput": spent.goodput or 0.0, "goodput/wall_s": spent.wall_s, "goodput/productive_s": spent.productive_s,
            **{f"goodput/badput/{cause}_s": s for cause, s in spent.by_cause().items()},
            **{f"goodput/energy/{cause}_kwh": kwh for cause, kwh in (spent.energy_kwh or {}).items()}}


class Mirror:
    def __init__(self, run: RunDir, spec: TrackingSpec, sinks: list[Sink]):
        self.run, self.spec = run, spec
        self.sinks = [GuardedSink(s, self.report) for s in sinks]
        self.state = read_tracking(run)

    def open(self, name: str, config: dict) -> "Mirror":
        identity = RunIdentity(self.run.path, name, config, dict(self.state.ids))
        ids = dict(self.state.ids)
        for sink in self.sinks:
            ids.update(sink.call("open", identity) or {})
        self._save(ids=ids)
        return self

    def sync(self) -> None:
        rows, history = self.run.metric_rows(), self.run.history()  # a line being appended is read whole next time
        last_step = self.state.last_step
        for row in rows:
            if row["step"] > last_step:
                self.log({k: row[k] for k in ROW_KEYS if _is_number(row.get(k))}, row["step"])
                last_step = row["step"]
        for event in history[self.state.events:]:
            metrics = event_metrics(event)
            if isinstance(event, Completed):  # the summary is written just before: where the wall time went
                metrics.update(ledger_metrics(read_summary(self.run)))
            if metrics:
                self.log(metrics, getattr(event, "step", None) or last_step)
        points = self.run.energy_points()
        for point in points[self.state.series:]:
            metrics = {f"energy/{node}/{key}": value for node, figures in point.nodes.items() for key, value in figures.items()}
            self.log({**metrics, "energy/total_kwh": point.kwh}, point.step)
        self._save(last_step=last_step, events=len(history), series=len(points))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            for sink in self.sinks:
                sink.call("log", metrics, step)

    def artifact(self, path: Path, name: str) -> None:
        for sink in self.sinks:
            sink.call("artifact", path, name)

    def close(self) -> None:
        for sink in self.sinks:
            sink.call("close")

    def _save(self, **changes) -> None:
        self.state = self.state.model_copy(update=changes)
        write_tracking(self.run, self.state)

    def report(self, sink: str, method: str, error: str) -> None:
        print(f"tracking: {sink} failed in {method} ({error}); it is dropped, the run goes on and its metrics stay in the run directory",
              flush=True)
        events.append(self.run.events, TrackingFailed(sink=sink, method=method, error=error))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_config(recipe: dict, plan: PlanRecord) -> dict:
    """What a dashboard shows as the run's configuration: the resolved recipe and the plan's numbers.
    The planner already redacted the recipe; redacted again for runs planned before it did."""
    keep = {"backend", "topology", "batch", "model", "estimate", "recipe_hash"}
    return {"recipe": redact_tree(recipe)[0], "plan": plan.model_dump(mode="json", include=keep)}


def mirror_once(run_dir: Path, spec: TrackingSpec, name: str, config: dict, metrics: dict[str, float], step: int,
                artifact: tuple[Path, str] | None = None) -> None:
    """For commands after training (gate, release): open the same dashboard runs, log, close."""
    if not spec.any:
        return
    mirror = Mirror(RunDir(run_dir), spec, make_sinks(spec)).open(name, config)
    mirror.log(metrics, step)
    if artifact:
        mirror.artifact(*artifact)
    mirror.close()
