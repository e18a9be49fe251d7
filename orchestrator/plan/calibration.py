"""What earlier runs of the same model shape on the same hardware measured, so that the plan's time
and energy forecast is a measurement where there is one, not an assumption.

A completed `orch run` adds a line to `calibration.jsonl` in the cache directory: its steady
throughput, the time it spent beyond its steps, and its billed power, under the key its plan
computed. The CLI edge reads the file and hands it to the pure planner, which looks up its own key;
the newest few runs count, their median taken and their spread shown, so one run slowed down does
not decide the forecast.

Throughput is kept as measured, tokens/s, not as a share of the peak the planner's probe saw: on a
2-core machine shared with other work, five runs of the default recipe forecast their successor
within 0.6-1.1x from the one before in tokens/s, and within 0.6-2.6x as a share of each plan's
probe (a tenth of a second of matmuls follows the moment's load, not the run's). The time beyond
the steps (evaluation, checkpoints, the first step's warm-up) depends on the schedule as well, so
it is taken from runs with the same steps, evaluation and checkpoint settings alone.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.shared.env import EnvSnapshot
from orchestrator.shared.filetree import write_file
from orchestrator.shared.model.architectures import Sizes
from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan

CALIBRATION_FILE = "calibration.jsonl"
NEWEST_PER_KEY = 5
MIN_STEPS = 50
"""Shorter runs measure mostly their start (the first step's warm-up, the final checkpoint), which
longer runs of the same shape spread thin: they are not recorded."""
MEASURED_COVERAGE = 0.9
"""The share of device-seconds with counter-grade energy data for a bill's power to count."""
MAX_LINES = 2000
"""Past this the file is rewritten with the newest runs of each key alone."""


@dataclass(frozen=True)
class Measured:
    """One completed run's figures, as a line of the store."""

    key: str
    """The shape and hardware (`calibration_key`'s first part)."""
    schedule: str
    """Its steps, evaluation and checkpoint settings (the second part)."""
    run_dir: str
    time: float
    tokens_per_s: float
    """Tokens per step over the mean step after the first (warming up). The mean, not the median:
    on a busy machine a few slow steps take much of the time (a shared 2-core machine's mean step
    was up to 1.3 x its median)."""
    wall_per_step_time: float
    """The run's wall time over the time its steps alone take at that rate: evaluation,
    checkpoints and the first step on top."""
    power_per_device_w: float | None
    """Billed IT energy per second of wall time, per GPU (on GPUs) or per node (on CPUs); None
    unless energy counters (NVML, RAPL) measured most of it. An estimated bill is the same model
    the forecast applies (TDP x load, the machine's memory in use), at another moment's load."""


@dataclass(frozen=True)
class Calibration:
    """The median of the newest runs of one shape, with the spread of their throughput."""

    runs: int
    tokens_per_s: float
    tokens_per_s_range: tuple[float, float]
    wall_per_step_time: float
    """1.0 where no run had the same schedule."""
    same_schedule: int
    power_per_device_w: float | None
    newest_run_dir: str


def _newest(runs: list[Measured]) -> list[Measured]:
    """The newest NEWEST_PER_KEY, a run recorded twice (run again once complete) counted once."""
    by_dir = {m.run_dir: m for m in sorted(runs, key=lambda m: m.time)}
    return sorted(by_dir.values(), key=lambda m: m.time)[-NEWEST_PER_KEY:]


@dataclass(frozen=True)
class Calibrations:
    """Every run in the store; empty where there is none (the planner then assumes, and says so)."""

    measured: tuple[Measured, ...] = ()

    def lookup(self, key: str) -> Calibration | None:
        shape, schedule = key.split("-")
        runs = _newest([m for m in self.measured if m.key == shape])
        if not runs:
            return None
        same = _newest([m for m in self.measured if m.key == shape and m.schedule == schedule])
        powers = [m.power_per_device_w for m in runs if m.power_per_device_w]
        rates = [m.tokens_per_s for m in runs]
        return Calibration(
            runs=len(runs),
            tokens_per_s=statistics.median(rates),
            tokens_per_s_range=(min(rates), max(rates)),
            wall_per_step_time=statistics.median(m.wall_per_step_time for m in same) if same else 1.0,
            same_schedule=len(same),
            power_per_device_w=statistics.median(powers) if powers else None,
            newest_run_dir=runs[-1].run_dir,
        )


def _digest(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def calibration_key(recipe: Recipe, arch: str, sizes: Sizes, batch: Batch, topology: Topology, env: EnvSnapshot) -> str:
    """`shape-schedule`, two digests. The shape is everything that decides a step's time and power
    (a CPU machine is its host, model and core count; GPUs are their product names); the schedule,
    what decides the time around the steps. Runs that differ in anything else (learning rate,
    data) share their measurements."""
    dist, model, train = recipe.distributed, recipe.model, recipe.train
    hardware = [gpu.name for gpu in env.gpus] if topology.device == "cuda" else [env.hostname, env.cpu_model, env.cpu_count]
    shape = {
        "arch": arch, "sizes": asdict(sizes), "lora": model.lora.model_dump(mode="json") if model.lora else None,
        "batch": batch.stored(), "topology": topology.stored(), "precision": train.precision,
        "activation_checkpointing": train.activation_checkpointing, "backend": dist.backend,
        "zero_stage": dist.zero_stage, "offload": [dist.offload_optimizer, dist.offload_params], "hardware": hardware,
    }
    schedule = {"steps": train.steps, "eval_interval": train.eval_interval, "eval_batches": train.eval_batches,
                "checkpoint": recipe.checkpoint.model_dump(mode="json", exclude={"dir"})}
    return f"{_digest(shape)}-{_digest(schedule)}"


def read_calibrations(cache_dir: Path) -> Calibrations:
    """The store as it is; a damaged line (a write cut short) is skipped, as a cache may be."""
    try:
        lines = (cache_dir / CALIBRATION_FILE).read_text().splitlines()
    except OSError:
        return Calibrations()
    measured = []
    for line in lines:
        try:
            measured.append(Measured(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return Calibrations(tuple(measured))


def measure_run(run_dir: Path) -> Measured | None:
    """A completed run's figures, from its directory; None for what measures nothing reusable: a dry
    run or one under MIN_STEPS (mostly start-up), a run resumed (its wall time holds the gaps
    between attempts), a plan from before plans had a calibration key."""
    run = RunDir(run_dir)
    summary = read_summary(run)
    if summary is None:
        return None
    plan = read_plan(run)
    estimate, topology = plan.estimate, plan.topology
    if (plan.dry_run or "-" not in estimate.calibration_key or summary.restarts
            or (summary.steps or 0) < MIN_STEPS):
        return None
    steady = [row["step_s"] for row in run.metric_rows()[1:]]
    if not steady:
        return None
    step_s, wall_s = statistics.mean(steady), summary.wall_s
    tokens_per_s = plan.batch.tokens_per_step / step_s
    units = topology.world_size if topology.device == "cuda" else topology.nodes
    energy = summary.energy
    kwh = energy.kwh if energy and energy.coverage >= MEASURED_COVERAGE else None
    shape, schedule = estimate.calibration_key.split("-")
    return Measured(
        key=shape, schedule=schedule, run_dir=str(run.path), time=time.time(),
        tokens_per_s=tokens_per_s,
        wall_per_step_time=max(1.0, wall_s / (summary.steps * step_s)),
        power_per_device_w=kwh * 3.6e6 / wall_s / units if kwh and wall_s else None,
    )


def record_run(run_dir: Path, cache_dir: Path) -> Measured | None:
    """Adds a completed run to the store (one appended line; the file is compacted when long). A
    cache that cannot be written loses the measurement, not the run: its forecasts stay assumed."""
    measured = measure_run(run_dir)
    if measured is None:
        return None
    path = cache_dir / CALIBRATION_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(asdict(measured)) + "\n")
        _compact(path)
    except OSError:
        return None
    return measured


def _compact(path: Path) -> None:
    """The newest runs of each shape and schedule alone, once the file is long."""
    if len(path.read_text().splitlines()) <= MAX_LINES:
        return
    groups: dict[tuple[str, str], list[Measured]] = {}
    for measured in read_calibrations(path.parent).measured:
        groups.setdefault((measured.key, measured.schedule), []).append(measured)
    kept = sorted((m for group in groups.values() for m in _newest(group)), key=lambda m: m.time)
    write_file(path, "".join(json.dumps(asdict(m)) + "\n" for m in kept))
