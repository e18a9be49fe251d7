"""The largest Llama this machine trains with 2 processes under ZeRO-3: 3 optimizer steps per size.

Sizes run smallest first with partitioned construction and activation checkpointing (the way a
model larger than one rank is meant to run) until one fails; the largest that trained is run
again without partitioned construction, and without activation checkpointing, side by side. Per
run: parameters, each rank's start-up peak (resident memory while the model was built, and while
the engine set up) against the whole model's fp32 bytes, the peak of a step, seconds per step, and
the largest rank's peak in every phase of the run (construction to the closing fingerprint, above
the rank's memory before its model was built) with the plan's per-device estimate set against the
step's peak (the larger of forward/backward and the optimizer step). The memory figures are what the
ranks measured (the run's `engine_built` and last `memory_phases` events, and its metrics rows).
Nothing is asserted.

Run it from the repository root, on an otherwise idle machine (a size that does not fit is ended
by the kernel's OOM killer; about 20 minutes on 2 cores and 24 GiB):

    python bench/scale.py [--sizes 0.3,0.5,0.7,0.85,1.0] [--seq-len 32] [--out bench/results/scale.json]
    python bench/scale.py --smoke --out /tmp/scale.json     # a 0.7M-parameter model, every variant (the test suite's)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import DEFAULT_RECIPE, REPO, RESULTS, last_lines, machine, orch_argv, parse_args, write_result

from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan
from orchestrator.rundir.memory_phases import MemoryPhases
from orchestrator.rundir.rows import EngineBuilt

SHAPES = {
    # billions of parameters (approximate): hidden, layers, intermediate; heads of 128 dimensions
    "0.001": (128, 2, 352),  # the smoke run's: every part in seconds
    "0.3": (1024, 24, 2816),
    "0.5": (1536, 18, 4096),
    "0.7": (1536, 25, 4096),
    "0.85": (2048, 17, 5504),
    "1.0": (2048, 20, 5504),
    "1.3": (2048, 26, 5504),
}
VARIANTS = {
    "partitioned + checkpointing": ("distributed.zero3_init=true", "train.activation_checkpointing=true"),
    "whole-model construction": ("distributed.zero3_init=false", "train.activation_checkpointing=true"),
    "no activation checkpointing": ("distributed.zero3_init=true", "train.activation_checkpointing=false"),
}
STEPS = 3
SMOKE = {"sizes": "0.001"}


def overrides(size: str, seq_len: int) -> list[str]:
    hidden, layers, intermediate = SHAPES[size]
    heads = hidden // 128
    return [f"model.hidden_size={hidden}", f"model.num_layers={layers}", f"model.intermediate_size={intermediate}",
            f"model.num_heads={heads}", f"model.num_kv_heads={heads}", f"data.seq_len={seq_len}", "data.max_bytes=1500000",
            "distributed.zero_stage=3", "distributed.procs_per_node=2", "train.micro_batch_size=1", "train.global_batch_size=2",
            f"train.steps={STEPS}", "train.schedule.warmup_steps=1", f"train.eval_interval={STEPS + 1}", "train.eval_batches=1",
            "checkpoint.keep_last=1", "checkpoint.async_save=false", "energy.enabled=false"]


def measure(size: str, variant: str, seq_len: int, work: Path) -> dict:
    run_dir = work / f"{size}-{variant.replace(' ', '_')}"
    log = work / f"{run_dir.name}.log"
    argv = orch_argv("run", run_dir, str(DEFAULT_RECIPE), *overrides(size, seq_len), *VARIANTS[variant])
    tic = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    run = RunDir(run_dir)
    plan = read_plan(run) if run.plan.exists() else None  # none when planning itself failed
    num_params = plan.model.num_params if plan else 0
    history = run.history()
    built = next((e for e in history if isinstance(e, EngineBuilt)), None)
    phases = [e for e in history if isinstance(e, MemoryPhases)]
    rows = run.metric_rows()
    result = {
        "size": size, "variant": variant, "num_params": num_params, "trained": code == 0 and len(rows) == STEPS,
        "exit_code": code, "wall_s": time.monotonic() - tic, "whole_model_fp32_bytes": num_params * 4,
    }
    if built:
        result["construction_growth_bytes"] = max(p - b for p, b in zip(built.construction_peak_bytes, built.rss_before_bytes))
        result["startup_growth_bytes"] = max(p - b for p, b in zip(built.peak_rss_bytes, built.rss_before_bytes))
    if phases:
        _, peaks, _ = phases[-1].figures()
        result["phase_peak_bytes"] = {phase: max(p for p in per_rank if p is not None) for phase, per_rank in peaks.items()}
        step_peak = max(result["phase_peak_bytes"].get(p, 0) for p in ("forward_backward", "optimizer_step"))
        result["planned_bytes"] = plan.memory_per_device.total_bytes
        result["planned_over_step_peak"] = result["planned_bytes"] / step_peak if step_peak else None
    if rows:
        result["step_peak_bytes"] = max(r["peak_memory_bytes"] for r in rows)
        result["s_per_step"] = sum(r["step_s"] for r in rows[1:] or rows) / len(rows[1:] or rows)
        result["losses"] = [r["loss"] for r in rows]
    if not result["trained"]:
        result["log_tail"] = last_lines(log, run_dir / "logs")  # the OOM killer's victim, or a rank's traceback
    shutil.rmtree(run_dir, ignore_errors=True)  # several GB of ZeRO shards per size
    return result


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def print_row(r: dict) -> None:
    whole = r["whole_model_fp32_bytes"] or 1
    ratio = f"{r['construction_growth_bytes'] / whole:.2f}" if "construction_growth_bytes" in r else "-"
    print(f"{r['num_params'] / 1e9:>7.2f}B  {r['variant']:<28}{gib(r.get('construction_growth_bytes')):>9}{ratio:>7}"
          f"{gib(r.get('startup_growth_bytes')):>9}{gib(r.get('step_peak_bytes')):>9}"
          f"{r.get('s_per_step', float('nan')):>9.1f}  {'trained' if r['trained'] else 'FAILED (exit %d)' % r['exit_code']}", flush=True)
    if "phase_peak_bytes" in r:
        phases = "  ".join(f"{phase} {gib(peak)}" for phase, peak in r["phase_peak_bytes"].items())
        print(f"{'':>9} GiB per phase, the largest rank: {phases}; plan {gib(r['planned_bytes'])} "
              f"= {r['planned_over_step_peak']:.2f}x the step's peak", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.3,0.5,0.7,0.85,1.0", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parse_args(parser, SMOKE)
    print(f"{'params':>8}  {'variant':<28}{'build GiB':>9}{'x fp32':>7}{'start GiB':>9}{'step GiB':>9}{'s/step':>9}")
    results, largest = [], None
    with tempfile.TemporaryDirectory(prefix="orch-scale-") as tmp:
        for size in args.sizes.split(","):
            result = measure(size, "partitioned + checkpointing", args.seq_len, Path(tmp))
            results.append(result)
            print_row(result)
            if not result["trained"]:
                break
            largest = size
        for variant in list(VARIANTS)[1:] if largest else []:
            result = measure(largest, variant, args.seq_len, Path(tmp))
            results.append(result)
            print_row(result)
    write_result(args.out, {"machine": machine("torch", "deepspeed", "transformers"), "smoke": args.smoke, "seq_len": args.seq_len,
                            "steps": STEPS, "largest_trained": largest, "runs": results})


if __name__ == "__main__":
    main()
