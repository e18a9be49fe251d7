"""The GPU check: the `llama-1b-gpu` recipe on one CUDA GPU in five steps, each timed, its result on one line.

Run on the GPU machine from the repository root, with `gpu-bundle/` (made by `bash scripts/gpu-bundle.sh`
on a machine with pip access) carried into the tree:

    bash scripts/gpu-check.sh                  # a venv from the carried wheels, then this module
    python bench/gpu.py [--budget-s 420]       # the steps alone, where the project and its wheels are installed
    python bench/gpu.py --smoke --runs DIR     # the same steps on CPU with a 4M-parameter model (the test suite's)

Steps, in this order (every run trains on the carried corpus, whose prepared data the bundle's cache holds):

  dry_run   `orch run RECIPE --dry-run`: one process, 5 steps
  bf16      a 20-step bf16 run: median tokens/s and MFU after warm-up (MFU against the plan's datasheet bf16 peak)
  energy    `orch energy` on that run: the method of each GPU figure (NVML's counter is expected) and the kWh
  gates     `orch gate` on that run's checkpoint, with small gate samples (the gates evaluate on the CPU, in fp32)
  zero3     a 4-step ZeRO-3 run: tokens/s, MFU, and each rank's start-up memory where the run logged `engine_built`

A checkpoint of the 1.1B model (about 14 GB with its optimizer state) is deleted as soon as no later step needs
it, so the disk holds one at a time. Each step has a time limit inside the budget; a step that passes it is
stopped (all its processes) and fails. The results go to $OUT/gpu-check.json where OUT is set, else to
./gpu-check.json, and the rank-0 log of a failed run beside it; the exit code is 1 when a step failed.

`--smoke` runs the same steps, commands and readers on CPU with a 4M-parameter model of the recipe (`SMOKE`),
on the carried data; only the energy step's demand for NVML's counter is dropped (there is no GPU). The
test suite runs it through gpu-check.sh (tests/integration/test_gpu_bundle.py), so that the check the GPU
machine gets has run end to end before it gets there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from common import REPO, tail

from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.rows import EngineBuilt

RECIPE = Path("recipes/llama-1b-gpu.yaml")
SHORT_RUN = ("train.steps=20", "train.schedule.warmup_steps=2", "train.eval_interval=1000")
ZERO3_RUN = ("distributed.zero_stage=3", "train.steps=4", "train.schedule.warmup_steps=1", "train.eval_interval=1000")
# `orch gate` evaluates in one CPU process in fp32, where the defaults (64 held-out sequences of 2,048 tokens,
# 20 sampled completions) would take many minutes for 1.1B parameters; these keep it near a minute.
SMALL_GATES = ("gates.quality.eval_sequences=2", "gates.memorisation.prefixes=2", "gates.memorisation.continuation_tokens=16",
               "gates.content.samples_per_prompt=1", "gates.content.max_new_tokens=16", "gates.content.unconditioned=2",
               "gates.robustness.texts=2")
WARMUP_STEPS = 2
"""Metric rows left out of the medians: the first steps carry allocation and kernel selection."""
# --smoke: every step on CPU in seconds, so that the test suite runs the check as the GPU machine will
# (tests/integration/test_gpu_bundle.py); the data stays the carried data (the sequence length is not in its key).
SMOKE = ("model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.intermediate_size=128",
         "model.max_position_embeddings=64", "data.seq_len=64", "train.micro_batch_size=1", "train.gradient_accumulation_steps=1")
STEP_LIMITS_S = {"dry_run": 150, "bf16": 180, "energy": 60, "gates": 150, "zero3": 150}
MIN_STEP_S = 20
RUNS = Path("runs/gpu-check")
RESULT = "gpu-check.json"


@dataclass(frozen=True)
class Bundle:
    """What `scripts/gpu-bundle.sh` fills and the check reads: gpu-bundle/ in the tree unless GPU_BUNDLE says
    elsewhere (the tests keep theirs in a temporary directory). A relative root is relative to the tree."""

    root: Path = Path("gpu-bundle")

    @property
    def corpus(self) -> Path:
        return self.root / "data" / "python-stdlib.parquet"

    @property
    def cache(self) -> Path:
        """ORCH_CACHE_DIR for every command: the prepared data is found there under the key `orch` computes."""
        return self.root / "cache"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def wheel_list(self) -> Path:
        """name==version of every carried wheel, as tested here."""
        return self.root / "wheels.txt"

    @property
    def install_list(self) -> Path:
        """What gpu-check.sh installs from the carried wheels: the project's own requirements less the left out."""
        return self.root / "requirements.txt"

    @property
    def data_overrides(self) -> tuple[str, ...]:
        """The recipe's data as the carried corpus; the path is part of the data's cache key, so the bundle and the
        check must name the same one."""
        return ("data.builtin=null", f"data.path={self.corpus}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One check: the bundle it reads, where its runs go (emptied first), whether it is the CPU smoke."""

    bundle: Bundle
    runs: Path
    smoke: bool

    @property
    def overrides(self) -> tuple[str, ...]:
        """For every training run: the carried data, and the smoke's small model where it is the smoke."""
        return (*self.bundle.data_overrides, *(SMOKE if self.smoke else ()))


class StepFailed(Exception):
    """A step's failure, with what it measured before failing."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary or {}


@dataclass
class StepRecord:
    name: str
    ok: bool
    seconds: float
    summary: dict = field(default_factory=dict)
    error: str | None = None


# -- what a run directory says (pure readers, unit-tested) -----------------------------------------


def throughput(run: RunDir, warmup_steps: int = WARMUP_STEPS) -> dict:
    """Steps, median tokens/s, MFU and step time after warm-up, losses, and the peak MFU is measured against."""
    from orchestrator.rundir.records import read_plan

    rows = run.metric_rows()
    if not rows:
        raise StepFailed(f"no metric rows in {run.metrics}")
    steady = rows[warmup_steps:] or rows[-1:]
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return {
        "steps": rows[-1]["step"],
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu": statistics.median(mfus) if mfus else None,
        "step_s": statistics.median(r["step_s"] for r in steady),
        "peak_tflops": read_plan(run).estimate.peak_flops_per_device / 1e12,
        "first_loss": rows[0]["loss"],
        "final_loss": rows[-1]["loss"],
        "val_loss": val[-1] if val else None,
    }


BUILT_FIGURES = ("rss_before_bytes", "construction_peak_bytes", "peak_rss_bytes")
"""An `engine_built` event's memory figures, in the order the results list them."""


def startup_memory(run: RunDir) -> list[dict] | None:
    """Each rank's start-up memory from the run's latest `engine_built` event, its `*_bytes` figures in GiB
    (each a list indexed by rank, or one number beside a `rank` field); None when the run logged none."""
    built = [e for e in run.history() if isinstance(e, EngineBuilt)]
    if not built:
        return None
    latest = built[-1]
    figures = {name.removesuffix("_bytes") + "_gib": getattr(latest, name) for name in BUILT_FIGURES if getattr(latest, name) is not None}
    per_rank = any(isinstance(v, list) for v in figures.values())
    columns = {name: v if isinstance(v, list) else [v] for name, v in figures.items()}
    ranks = range(max(map(len, columns.values()), default=0))
    return [{"rank": rank if per_rank else getattr(latest, "rank", 0),
             **{name: values[rank] / 2**30 for name, values in columns.items() if rank < len(values)}} for rank in ranks]


def energy_summary(run: RunDir) -> dict:
    """The bill as `orch energy` computes it from the run's records: each device's method and kWh, the totals."""
    from orchestrator.shared.energy.bill import bill_for

    bill = bill_for(run.path)
    gpus, totals = [d for _, d in bill.devices() if d.kind == "gpu"], bill.totals
    return {
        "gpu_methods": sorted({d.method for d in gpus}),
        "gpu_kwh": sum(d.kwh or 0.0 for d in gpus),
        "kwh": totals.kwh, "measured_kwh": totals.measured_kwh, "estimated_kwh": totals.estimated_kwh, "coverage": totals.coverage,
        "j_per_token": totals.j_per_token, "missing": [m.model_dump(mode="json") for m in totals.missing],
        "devices": [{"node": node, **d.model_dump(include={"device", "kind", "method", "kwh"})} for node, d in bill.devices()],
    }


def gate_summary(run: RunDir) -> dict:
    """The newest gate report: the verdict and each gate's status."""
    from orchestrator.gates.outcome import newest_report

    report = newest_report(run)
    if report is None:
        raise StepFailed(f"no gate report in {run.gates}")
    return {"checkpoint": report.checkpoint, "passed": report.passed, "verdict": report.verdict(),
            "gates": {r.name: r.status for r in report.results}}


def data_origin(run: RunDir, carried: set[str]) -> str:
    """`carried` when the run used the bundle's prepared data, else where it prepared its own."""
    from orchestrator.rundir.records import read_data

    directory = read_data(run).dir
    if directory.name in carried:
        return "carried"
    return f"prepared on this machine in {directory} (the cache key changed since the bundle was made: run scripts/gpu-bundle.sh again)"


def describe(record: StepRecord) -> str:
    """The step's one line after its name and time."""
    s = record.summary
    parts = []
    if "tokens_per_s" in s:
        mfu = f"MFU {s['mfu']:.1%} of {s['peak_tflops']:.3g} TFLOP/s" if s["mfu"] is not None else "no MFU"
        parts.append(f"{s['steps']} steps, {s['tokens_per_s']:,.0f} tokens/s, {mfu}, {s['step_s']:.2f} s/step, "
                     f"loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}")
    if s.get("startup_memory"):
        parts.append("start-up memory " + "; ".join(
            f"rank {m['rank']}: " + ", ".join(f"{k.removesuffix('_gib')} {v:.2f} GiB" for k, v in m.items() if k != "rank")
            for m in s["startup_memory"]))
    if "data" in s:
        parts.append(f"data {s['data']}")
    if "gpu_methods" in s:
        parts.append(f"GPU method {'/'.join(s['gpu_methods']) or 'none'}, GPU {s['gpu_kwh']:.5f} kWh; total {s['kwh']:.5f} kWh "
                     f"(measured {s['measured_kwh']:.5f}, estimated {s['estimated_kwh']:.5f}), coverage {s['coverage']:.0%}")
    if "verdict" in s:
        parts.append(f"{s['verdict']} on {s['checkpoint']}: " + ", ".join(f"{k} {v}" for k, v in s["gates"].items()))
    if "install" in s:
        parts.append(f"install {s['install']}; " + ("; ".join(s["pip_check"]) or "pip check clean"))
    text = "; ".join(parts)
    return f"{text}; {record.error}" if record.error and text else record.error or text


# -- running the steps ------------------------------------------------------------------------------


class Check:
    """The steps so far, the budget left, and the commands' environment."""

    def __init__(self, settings: Settings, budget_s: float, out_dir: Path):
        self.settings = settings
        self.deadline = time.monotonic() + budget_s
        self.out_dir = out_dir
        self.records: list[StepRecord] = []
        self.env = {**os.environ, "ORCH_CACHE_DIR": str(REPO / settings.bundle.cache), "PYTHONUNBUFFERED": "1"}
        data = REPO / settings.bundle.cache / "data"
        self.carried = {p.parent.name for p in data.glob("*/manifest.json")}

    def step(self, name: str, body: Callable[[float], dict]) -> StepRecord:
        """Run `body(time_limit_s)`, time it, print its line and keep its record."""
        limit = min(STEP_LIMITS_S[name], self.deadline - time.monotonic())
        tic = time.monotonic()
        if limit < MIN_STEP_S:
            record = StepRecord(name, False, 0.0, error=f"not run: {limit:.0f} s left in the budget")
        else:
            try:
                record = StepRecord(name, True, 0.0, body(limit))
            except StepFailed as failure:
                record = StepRecord(name, False, 0.0, failure.summary, str(failure))
            except Exception as exc:  # a reader's error is this step's failure; the later steps still run
                record = StepRecord(name, False, 0.0, error=f"{type(exc).__name__}: {exc}")
        record.seconds = time.monotonic() - tic
        print(f"{'ok' if record.ok else 'FAIL':<4}  {name:<8} {record.seconds:6.1f} s  {describe(record)}", flush=True)
        self.records.append(record)
        return record

    def orch(self, name: str, args: list[str], limit_s: float) -> Path:
        """`orch ARGS` from the repository root with this interpreter, output to <runs>/<name>.log; a non-zero
        exit or the time limit raises StepFailed with the output's last lines."""
        log = REPO / self.settings.runs / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                code = process.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                stop(process)
                raise StepFailed(f"stopped after its limit of {limit_s:.0f} s; last lines of {log}:\n{tail(log, 15)}") from None
        if code != 0:
            raise StepFailed(f"exit code {code}; last lines of {log}:\n{tail(log, 15)}", {"exit_code": code})
        return log

    def run(self, name: str, dry_run: bool = False) -> RunDir:
        """<runs>/<name>, where a dry run's directory is named as `orch run --dry-run` names it."""
        from orchestrator.plan.planner import DRY_RUN_SUFFIX

        return RunDir(REPO / self.settings.runs / (name + (DRY_RUN_SUFFIX if dry_run else "")))

    def train(self, name: str, overrides: tuple[str, ...], limit_s: float, dry_run: bool = False) -> RunDir:
        """`orch run` of the recipe on the carried data into <runs>/<name>; its rank-0 log is kept in the
        output folder if it fails."""
        run = self.run(name, dry_run)
        argv = ["run", str(RECIPE), *self.settings.overrides, *overrides, "--run-dir", str(self.run(name).path)]
        try:
            self.orch(name, argv + (["--dry-run"] if dry_run else []), limit_s)
        except StepFailed:
            if run.rank_log(0).exists():
                shutil.copyfile(run.rank_log(0), self.out_dir / f"{name}-rank-0.log")
            raise
        return run


def stop(process: subprocess.Popen) -> None:
    """Kill `orch` and every process under it: the node launcher runs in its own session, its ranks under it."""
    import psutil

    try:
        victims = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)


def drop_checkpoints(run: RunDir) -> None:
    """A 1.1B checkpoint is about 14 GB: gone once no later step reads it, whether or not its step passed."""
    from orchestrator.rundir.records import read_plan

    try:
        root = read_plan(run).checkpoint_dir
    except (OSError, ValueError):
        root = run.default_checkpoints
    shutil.rmtree(root, ignore_errors=True)


def run_steps(check: Check) -> None:
    """The five steps; each later one runs whatever happened to the earlier ones."""
    runs = {"dry_run": check.run("dry_run", dry_run=True), "bf16": check.run("bf16"), "zero3": check.run("zero3")}

    def dry_run(limit_s: float) -> dict:
        try:
            run = check.train("dry_run", (), limit_s, dry_run=True)
            return {**throughput(run), "data": data_origin(run, check.carried)}
        finally:
            drop_checkpoints(runs["dry_run"])

    def bf16(limit_s: float) -> dict:
        run = check.train("bf16", (*SHORT_RUN, *SMALL_GATES), limit_s)
        return {**throughput(run), "data": data_origin(run, check.carried)}

    def energy(limit_s: float) -> dict:
        check.orch("energy", ["energy", str(runs["bf16"].path)], limit_s)
        summary = energy_summary(runs["bf16"])
        if not check.settings.smoke and summary["gpu_methods"] != ["counter"]:  # the smoke runs on CPU: no GPU figure
            raise StepFailed(f"the GPU's energy figure is {summary['gpu_methods'] or 'absent'}, not NVML's counter", summary)
        return summary

    def gates(limit_s: float) -> dict:
        from orchestrator.errors import EXIT_GATES_FAILED

        try:
            check.orch("gates", ["gate", str(runs["bf16"].path)], limit_s)
        except StepFailed as failure:
            if failure.summary.get("exit_code") != EXIT_GATES_FAILED:
                raise
        finally:
            drop_checkpoints(runs["bf16"])
        return gate_summary(runs["bf16"])  # a gate failing on a 20-step model is a finding: the step did its work

    def zero3(limit_s: float) -> dict:
        try:
            run = check.train("zero3", ZERO3_RUN, limit_s)
            memory = startup_memory(run)
            return {**throughput(run), **({"startup_memory": memory} if memory else {})}
        finally:
            drop_checkpoints(runs["zero3"])

    for name, body in (("dry_run", dry_run), ("bf16", bf16), ("energy", energy), ("gates", gates), ("zero3", zero3)):
        check.step(name, body)


# -- the result file ----------------------------------------------------------------------------------


def machine() -> dict:
    """Where the check ran: host, Python, library versions, the GPU as nvidia-smi names it, free disk."""
    versions = {}
    for package in ("torch", "deepspeed", "transformers", "accelerate", "datasets", "pydantic", "nvidia-ml-py"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        gpus = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        gpus = [f"nvidia-smi failed: {exc}"]
    free = shutil.disk_usage(REPO).free
    return {"host": platform.node(), "python": platform.python_version(), "versions": versions, "gpus": gpus,
            "disk_free_gib": round(free / 2**30, 1)}


def setup_record(args: argparse.Namespace) -> StepRecord | None:
    """The venv's install, as gpu-check.sh reports it (`--install`, `--setup-s`, `--pip-check FILE`)."""
    if args.install is None:
        return None
    lines = args.pip_check.read_text().splitlines() if args.pip_check and args.pip_check.exists() else []
    problems = [line for line in lines if "No broken requirements" not in line]
    record = StepRecord("setup", args.install != "failed", args.setup_s, {"install": args.install, "pip_check": problems})
    print(f"{'ok' if record.ok else 'FAIL':<4}  {'setup':<8} {record.seconds:6.1f} s  {describe(record)}", flush=True)
    return record


def write_result(out_dir: Path, settings: Settings, records: list[StepRecord], info: dict, started: float,
                 seconds: float) -> bool:
    """gpu-check.json: the recipe and its overrides, the machine, every step's record; True when all passed."""
    ok = all(r.ok for r in records)
    result = {"recipe": str(RECIPE), "smoke": settings.smoke,
              "overrides": {"every": settings.overrides, "bf16": SHORT_RUN + SMALL_GATES, "zero3": ZERO3_RUN},
              "started_at": started, "seconds": seconds, "ok": ok, "machine": info, "steps": [asdict(r) for r in records]}
    (out_dir / RESULT).write_text(json.dumps(result, indent=2) + "\n")
    failed = ", ".join(r.name for r in records if not r.ok)
    print(f"gpu check: {'every step passed' if ok else 'FAILED: ' + failed}; {seconds:.0f} s; written to {out_dir / RESULT}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=420.0, help="time for the five steps together")
    parser.add_argument("--install", choices=("resolved", "fallback", "failed"), help="from gpu-check.sh: how the venv was made")
    parser.add_argument("--setup-s", type=float, default=0.0, help="from gpu-check.sh: seconds spent making the venv")
    parser.add_argument("--pip-check", type=Path, help="from gpu-check.sh: a file holding `pip check`'s output")
    parser.add_argument("--bundle", type=Path, default=Bundle().root, help="the bundle's directory (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where the check's runs go, emptied first (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="every step on CPU with a 4M-parameter model, in about a minute")
    args = parser.parse_args()
    settings = Settings(bundle=Bundle(args.bundle), runs=args.runs, smoke=args.smoke)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path.cwd()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (REPO / settings.bundle.corpus).is_file():
        print(f"gpu check: {settings.bundle.corpus} is missing: run `bash scripts/gpu-bundle.sh` where pip works and carry "
              f"{settings.bundle.root}/", file=sys.stderr)
        return 2
    shutil.rmtree(REPO / settings.runs, ignore_errors=True)  # a second check starts fresh, never resuming the first's runs
    started, tic, info = time.time(), time.monotonic(), machine()
    print(f"gpu check{' (CPU smoke)' if settings.smoke else ''}: {RECIPE} on {', '.join(info['gpus']) or 'no GPU found'}; "
          f"budget {args.budget_s:.0f} s", flush=True)
    setup = setup_record(args)
    check = Check(settings, args.budget_s, out_dir)
    run_steps(check)
    records = ([setup] if setup else []) + check.records
    return 0 if write_result(out_dir, settings, records, info, started, time.monotonic() - tic) else 1


if __name__ == "__main__":
    sys.exit(main())
