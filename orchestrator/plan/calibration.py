"""What earlier runs of the same model shape on the same hardware measured, so that the plan's time
and energy forecast is a measurement where there is one, not an assumption.

A completed `orch run` adds a line to `calibration.jsonl` in the cache directory: its steady
throughput, the time it spent beyond its steps (evaluation, checkpoints, the first step's warm-up)
and its billed power, under the key its plan computed from everything that decides them (model
shape, batch, precision, backend, ZeRO stage, topology, and the machine). The CLI edge reads the
file and hands it to the pure planner, which looks up its own key; the newest few runs of a key
count, their median taken, so one run slowed by a busy machine does not decide the forecast.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.env import EnvSnapshot
from orchestrator.model.architectures import Sizes
from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan

CALIBRATION_FILE = "calibration.jsonl"
NEWEST_PER_KEY = 5
MIN_STEPS = 50
"""Shorter runs measure mostly their start (the first step's warm-up, the final checkpoint), which
longer runs of the same shape spread thin: they are not recorded."""
MAX_LINES = 2000
"""Past this the file is rewritten with the newest runs of each key alone."""


@dataclass(frozen=True)
class Measured:
    """One completed run's figures, as a line of the store."""

    key: str
    run_dir: str
    time: float
    tokens_per_s: float
    """Median of the steady steps (the first, warming up, left out)."""
    mfu: float
    wall_per_step_time: float
    """The run's wall time over the time its steps alone take at that rate: evaluation,
    checkpoints and the first step on top."""
    power_per_device_w: float | None
    """Billed IT energy per second of wall time, per GPU (on GPUs) or per node (on CPUs)."""


@dataclass(frozen=True)
class Calibration:
    """The median of the newest runs of one key, with the spread of their throughput."""

    runs: int
    tokens_per_s: float
    tokens_per_s_range: tuple[float, float]
    mfu: float
    wall_per_step_time: float
    power_per_device_w: float | None
    newest_run_dir: str


@dataclass(frozen=True)
class Calibrations:
    """Every run in the store; empty where there is none (the planner then assumes, and says so)."""

    measured: tuple[Measured, ...] = ()

    def lookup(self, key: str) -> Calibration | None:
        newest = {m.run_dir: m for m in sorted(self.measured, key=lambda m: m.time) if m.key == key}  # a run recorded twice counts once
        runs = sorted(newest.values(), key=lambda m: m.time)[-NEWEST_PER_KEY:]
        if not runs:
            return None
        powers = [m.power_per_device_w for m in runs if m.power_per_device_w]
        throughput = [m.tokens_per_s for m in runs]
        return Calibration(
            runs=len(runs),
            tokens_per_s=statistics.median(throughput),
            tokens_per_s_range=(min(throughput), max(throughput)),
            mfu=statistics.median(m.mfu for m in runs),
            wall_per_step_time=statistics.median(m.wall_per_step_time for m in runs),
            power_per_device_w=statistics.median(powers) if powers else None,
            newest_run_dir=runs[-1].run_dir,
        )


def calibration_key(recipe: Recipe, arch: str, sizes: Sizes, batch: Batch, topology: Topology, env: EnvSnapshot) -> str:
    """Everything that decides a step's time and power, hashed: runs that differ in anything else
    (steps, learning rate, data) share their measurements. A CPU machine is its host, model and
    core count; GPUs are their product names."""
    dist, model = recipe.distributed, recipe.model
    hardware = [gpu.name for gpu in env.gpus] if topology.device == "cuda" else [env.hostname, env.cpu_model, env.cpu_count]
    shape = {
        "arch": arch, "sizes": asdict(sizes), "lora": model.lora.model_dump(mode="json") if model.lora else None,
        "batch": asdict(batch), "topology": asdict(topology), "precision": recipe.train.precision,
        "activation_checkpointing": recipe.train.activation_checkpointing, "backend": dist.backend,
        "zero_stage": dist.zero_stage, "offload": [dist.offload_optimizer, dist.offload_params], "hardware": hardware,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


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
    if not run.summary.is_file():
        return None
    plan, summary = read_plan(run), run.read_json(run.summary.name)
    if (plan.dry_run or not plan.estimate.calibration_key or summary.get("restarts") or not summary.get("tokens_per_s")
            or summary.get("steps", 0) < MIN_STEPS):
        return None
    tokens_per_s, wall_s = summary["tokens_per_s"], summary["wall_s"]
    step_time_s = summary["tokens"] / tokens_per_s
    units = plan.topology.world_size if plan.topology.device == "cuda" else plan.topology.nodes
    kwh = (summary.get("energy") or {}).get("kwh")
    return Measured(
        key=plan.estimate.calibration_key, run_dir=str(run.path), time=time.time(), tokens_per_s=tokens_per_s,
        mfu=summary["mfu"], wall_per_step_time=max(1.0, wall_s / step_time_s),
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
    """The newest runs of each key alone, once the file is long (one line per run directory)."""
    lines = path.read_text().splitlines()
    if len(lines) <= MAX_LINES:
        return
    runs = {m.run_dir: m for m in sorted(read_calibrations(path.parent).measured, key=lambda m: m.time)}
    by_key: dict[str, list[Measured]] = {}
    for measured in runs.values():
        by_key.setdefault(measured.key, []).append(measured)
    kept = sorted((m for group in by_key.values() for m in group[-NEWEST_PER_KEY:]), key=lambda m: m.time)
    partial = path.with_suffix(".tmp")
    partial.write_text("".join(json.dumps(asdict(m)) + "\n" for m in kept))
    partial.replace(path)
