"""The state of a run, from its directory and (for Slurm runs) the scheduler."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError, SlurmError
from orchestrator.gates.outcome import newest_report
from orchestrator.rundir.bill import read_bill
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir, damaged
from orchestrator.rundir.records import read_jobs, read_plan, read_recipe
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.recovery_events import AttemptFailed, Straggler
from orchestrator.rundir.rows import Completed, Preempted, Pruned, Start, StoppedOverBudget
from orchestrator.shared.goodput import GoodputLedger, ledger
from orchestrator.slurm.client import Job, job_table
from orchestrator.watching.phase_memory import latest_memory, memory_lines, planned_bytes


@dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    name: str
    state: str
    step: int
    steps: int
    loss: float | None
    restarts: int
    job_id: str | None = None
    task: str = "pretrain"
    backend: str = "deepspeed"
    nodes: int = 1
    energy_kwh: float | None = None
    gates: str = "-"
    damage: str | None = None
    """Why the run's files cannot be read (state DAMAGED): `orch runs` lists it rather than dropping it."""
    chain: tuple[tuple[str, str, str], ...] = ()
    """(kind, job id, state) of each job `orch submit` chained (prepare, train, gate, release)."""
    jobs: tuple[tuple[str, str], ...] = ()
    """(kind, job id) of each of the run's Slurm jobs, oldest first."""
    failures: str = ""
    """The attempts that ended on a fault, by failure class, and how many the run restarted itself."""
    ledger: GoodputLedger | None = None
    """Where the wall time went: the summary's for a completed run, else from the history so far."""
    stragglers: str = ""
    """The run's latest straggler report, while it names a rank."""
    memory: tuple[str, ...] = ()
    """Each rank's peak memory per phase, as of the latest `memory_phases` event, beside the plan's estimate."""

    @property
    def finished(self) -> bool:
        """Nothing more will happen without someone starting it again."""
        return self.state.split()[0] in TERMINAL_STATES

    def line(self) -> str:
        loss = f"{self.loss:.4f}" if self.loss is not None else "-"
        job = f"  slurm job {self.job_id}" if self.job_id else ""
        failures = f", failures {self.failures}" if self.failures else ""
        line = f"{self.name}: {self.state}, step {self.step}/{self.steps}, loss {loss}, restarts {self.restarts}{failures}{job}  ({self.run_dir})"
        if self.chain:
            line += "\n  jobs: " + " -> ".join(f"{kind} {job} {state}" for kind, job, state in self.chain)
        line += f"\n  {self.stragglers}" if self.stragglers else ""
        line += "".join(f"\n  {'  ' if i else ''}{text}" for i, text in enumerate(self.memory))
        return line + (f"\n  {self.ledger.describe()}" if self.ledger and self.ledger.wall_s else "")


def run_status(path: Path) -> RunStatus:
    """The run's state, from Slurm (one query for all its jobs) when it was submitted; from its
    directory, marked so, when the scheduler cannot be asked."""
    local = local_status(path)
    try:
        return with_jobs(local, job_table([job for _, job in local.jobs]))
    except SlurmError:
        status = with_jobs(local, None)
        return dataclasses.replace(status, state=f"{status.state} (scheduler unreachable)") if status.job_id else status


def local_status(path: Path) -> RunStatus:
    """The run as its directory records it, without asking the scheduler."""
    run = RunDir(path)
    if not run.recipe.exists():
        raise OrchestratorError(f"{path} is not a run directory (no recipe.yaml)")
    recipe = read_recipe(run)
    # The logs' readers already skip torn lines; a row without a loss (a hand edit) is no step either.
    rows = [row for row in run.metric_rows() if "loss" in row]
    history = run.history()
    jobs = read_jobs(run)
    training = jobs.of_kind("train")
    state = _local_state(run, history)
    return RunStatus(
        run_dir=path,
        name=recipe.name,
        state=state,
        step=rows[-1]["step"] if rows else 0,
        steps=recipe.train.steps,
        loss=rows[-1]["loss"] if rows else None,
        restarts=max(0, sum(isinstance(e, Start) for e in history) - 1),
        job_id=training[-1] if training else None,
        jobs=tuple(jobs.chain()),
        task=recipe.task,
        backend=recipe.distributed.backend,
        nodes=recipe.distributed.nodes,
        energy_kwh=_energy_kwh(run),
        gates=_gates(run),
        failures=describe_failures(history),
        ledger=run_ledger(run, history, rows, state),
        stragglers=latest_stragglers(history),
        memory=run_memory(run, history),
    )


def run_memory(run: RunDir, history: list[BaseEvent]) -> tuple[str, ...]:
    """The latest per-phase memory table, beside the plan's estimate per device; () before the first is written."""
    latest = latest_memory(history)
    if latest is None:
        return ()
    return tuple(memory_lines(latest, planned_bytes(read_plan(run) if run.plan.exists() else None)))


def run_ledger(run: RunDir, history: list[BaseEvent], rows: list[dict], state: str) -> GoodputLedger | None:
    """The completed run's ledger from its summary; a live run's up to now, another's up to its last event.
    None for a summary written before the ledger, or a run not started."""
    summary = read_summary(run) if state == "COMPLETED" else None
    if summary is not None:
        return summary.ledger
    times = [e.time for e in history if e.time is not None]
    if not times:
        return None
    return ledger(history, rows, time.time() if state in LIVE_STATES else max(times))


def latest_stragglers(history: list[BaseEvent]) -> str:
    """The last straggler report's line, unless the ranks caught up since (or none was ever named)."""
    last = next((e for e in reversed(history) if isinstance(e, Straggler)), None)
    return last.describe() if last and last.ranks else ""


def describe_failures(history: list[BaseEvent]) -> str:
    """`2 crash, 1 hang (2 restarted in the job)`: each attempt's fault (its `attempt_failed`), by class; "" when none."""
    failed = [e for e in history if isinstance(e, AttemptFailed)]
    if not failed:
        return ""
    by_class = ", ".join(f"{count} {failure}" for failure, count in Counter(e.failure for e in failed).items())
    return f"{by_class} ({sum(bool(e.restarting) for e in failed)} restarted in the job)"


def with_jobs(status: RunStatus, table: dict[str, Job] | None) -> RunStatus:
    """The run's state as the scheduler's `table` has its training job, and each chained job's state;
    the directory's state where the table lacks the job or is None (the scheduler could not be asked)."""
    state = status.state
    if table is not None and status.job_id in table and state != "PRUNED":  # a sweep's pruned trial: its task ends COMPLETED
        state = table[status.job_id].state
    chain = tuple((kind, job, _job_state(table, job)) for kind, job in status.jobs) if len(status.jobs) > 1 else ()
    return dataclasses.replace(status, state=state, chain=chain)


def _job_state(table: dict[str, Job] | None, job_id: str) -> str:
    """The job's state, with its exit code once it failed; `?` when the scheduler no longer knows it."""
    job = (table or {}).get(job_id)
    if job is None:
        return "?"
    return f"{job.state} (exit {job.exit_code})" if job.state == "FAILED" else job.state


def _energy_kwh(run: RunDir) -> float | None:
    bill = read_bill(run)
    return bill.totals.facility_kwh if bill else None


def _gates(run: RunDir) -> str:
    """The newest gate report in a word: `passed@step` or `failed@step`."""
    try:
        report = newest_report(run)
    except ValueError as exc:
        raise damaged(run.gate_reports()[-1], exc) from None
    if report is None:
        return "-"
    return f"{'passed' if report.passed else 'failed'}@{report.step}"


LIVE_STATES = ("STARTED", "RESTARTING")
"""The states whose ledger runs up to now: the run is training, or starting again."""
TERMINAL_STATES = ("COMPLETED", "PREEMPTED", "PRUNED", "STOPPED_OVER_BUDGET", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


_STATE_EVENTS = (Start, Preempted, Pruned, Completed, StoppedOverBudget, AttemptFailed)
_STATE_OF = {Start: "STARTED", Preempted: "PREEMPTED", Pruned: "PRUNED", StoppedOverBudget: "STOPPED_OVER_BUDGET"}


def _local_state(run: RunDir, history: list[BaseEvent]) -> str:
    # `pruned`: a sweep stopped the run for good (after its `preempted`), and told its study so.
    event = next((e for e in reversed(history) if isinstance(e, _STATE_EVENTS)), None)
    if isinstance(event, AttemptFailed):  # a fault ended the newest attempt: the next one is starting, or none will
        return "RESTARTING" if event.restarting else "FAILED"
    last = type(event) if event is not None else None
    # The summary of an earlier attempt stays while a later one (more steps) trains: a start after it wins.
    summary = read_summary(run) if last is not Start else None
    if summary is not None and summary.completed:
        return "COMPLETED"
    return _STATE_OF.get(last, "PREPARED")


def matches(status: RunStatus, filters: dict[str, str | None]) -> bool:
    """Filters on state (prefix, any case), name (substring of the recipe's name or the run directory's,
    any case), task, backend; None matches all."""
    checks = {
        "state": lambda v: status.state.upper().startswith(v.upper()),
        "name": lambda v: v.lower() in status.name.lower() or v.lower() in status.run_dir.name.lower(),
        "task": lambda v: status.task == v,
        "backend": lambda v: status.backend == v,
    }
    return all(checks[key](value) for key, value in filters.items() if value is not None)


def render_runs(rows: list[RunStatus]) -> str:
    lines = [f"{'name':<24} {'task':<8} {'backend':<9} {'nodes':>5} {'state':<12} {'step':>11} {'loss':>8} {'energy':>11} {'gates':<14} {'job':>6}  run directory"]
    for r in rows:
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        energy = f"{r.energy_kwh * 1000:.3g} Wh" if r.energy_kwh is not None else "-"
        lines.append(f"{r.name[:24]:<24} {r.task:<8} {r.backend:<9} {r.nodes:>5} {r.state[:12]:<12} {f'{r.step}/{r.steps}':>11} {loss:>8} "
                     f"{energy:>11} {r.gates:<14} {r.job_id or '-':>6}  {r.run_dir}" + (f"  {r.damage}" if r.damage else ""))
    return "\n".join(lines)


@dataclass(frozen=True)
class RunTable:
    rows: list[RunStatus]
    scheduler_error: str | None = None
    """Why the scheduler could not be asked: the Slurm runs' states are then their directories'."""


def find_runs(root: Path, filters: dict[str, str | None] | None = None) -> RunTable:
    """Every run directory below `root` (one level) that `filters` match, newest first. One whose files
    cannot be read is listed as DAMAGED with the reason, so the others still show and it is not
    silently lost. The scheduler is asked once, for the jobs of the runs left after every filter but
    the state (which it decides)."""
    filters = filters or {}
    found = []
    for path in sorted(root.glob("*/recipe.yaml"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            found.append(local_status(path.parent))
        except (OrchestratorError, OSError) as exc:
            found.append(RunStatus(path.parent, path.parent.name, "DAMAGED", 0, 0, None, 0, task="-", backend="-",
                                   damage=_reason(exc, path.parent)))
    found = [row for row in found if matches(row, {**filters, "state": None})]
    error = None
    try:
        table = job_table([job for row in found for _, job in row.jobs])
    except SlurmError as exc:
        table, error = None, str(exc)
    rows = [with_jobs(row, table) for row in found]
    return RunTable([row for row in rows if matches(row, {"state": filters.get("state")})], error)


def _reason(exc: Exception, run_dir: Path) -> str:
    """The error's line without the run directory it names (the table shows that already)."""
    text = str(exc) if isinstance(exc, OrchestratorError) else f"{exc.strerror or exc}: {exc.filename}"
    return text.replace(f"{run_dir}/", "")
