"""How much throughput does the orchestrator cost? `orch run` against a bare DeepSpeed loop.

Both train the same model with the same DeepSpeed JSON, micro batch, sequence length and token
data, on the same ranks: the orchestrator through `orch run`, the baseline through
`bench/bare_deepspeed.py`, which reads the model sizes, DeepSpeed config and data directory from
the orchestrator's run directory. The two alternate (orch, bare, orch, bare, ... for --repeats),
because shared machines drift. Per-step tokens/s after the warmup steps are pooled per side and
their medians compared; MFU is tokens/s x flops_per_token (from plan.json) / the matmul peak
measured here (fp32 on CPU, bf16 on CUDA) for the whole machine. Nothing is asserted on the
numbers; the goal for orchestrator / bare is >= 0.97.

Run it from the repository root (about 2 minutes on a 2-core CPU machine):

    python bench/throughput.py [--steps 40] [--warmup-steps 5] [--repeats 3] [--out bench/results/throughput.json]
    python bench/throughput.py --smoke --out /tmp/throughput.json     # every part, a few steps (the test suite's)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import DEFAULT_RECIPE, REPO, RESULTS, machine, orch_argv, parse_args, repo_relative, run_logged, write_result

from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import PlanRecord, read_plan, read_recipe

BARE_SCRIPT = REPO / "bench" / "bare_deepspeed.py"
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
SMOKE = {"steps": 3, "warmup_steps": 1, "repeats": 1, "peak_seconds": 0.2}


def main() -> None:
    args = _parse_args()
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as scratch:
        runs = _alternate(args, Path(scratch))
    plan = runs["plan"]
    peak = measure_peak(plan, args.peak_seconds)
    result = summarise(args, plan, runs["recipe"], runs, peak)
    print(render_table(result))
    write_result(args.out, result)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=5, help="first steps of each run left out of the medians")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating orch and bare")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="a Llama recipe (the bare loop builds Llama only)")
    parser.add_argument("--peak-seconds", type=float, default=3.0, help="seconds of each matmul timing of the machine's peak")
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = parse_args(parser, SMOKE)
    args.recipe = args.recipe.resolve()
    if args.steps <= args.warmup_steps:
        parser.error(f"--steps ({args.steps}) must exceed --warmup-steps ({args.warmup_steps}) to leave steps to measure")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _alternate(args: argparse.Namespace, scratch: Path) -> dict:
    """orch, bare, orch, bare, ...: the first orch run's directory supplies the bare loop's config, and
    its plan and recipe the result's (read here: the scratch directory goes once the runs are done)."""
    orch_runs, bare_runs = [], []
    first_run_dir = None
    for repeat in range(args.repeats):
        run_dir = scratch / f"orch-{repeat}"
        orch_runs.append(run_orchestrator(args.recipe, args.steps, run_dir))
        first_run_dir = first_run_dir or run_dir
        bare_runs.append(run_bare(first_run_dir, args.steps, scratch / f"bare-{repeat}"))
        print(f"repeat {repeat + 1}/{args.repeats}: orch {_median_after(orch_runs[-1]['tokens_per_s'], args.warmup_steps):,.0f} "
              f"tokens/s, bare {_median_after(bare_runs[-1]['tokens_per_s'], args.warmup_steps):,.0f} tokens/s", flush=True)
    first = RunDir(first_run_dir)
    return {"plan": read_plan(first), "recipe": read_recipe(first), "orch": orch_runs, "bare": bare_runs}


def run_orchestrator(recipe: Path, steps: int, run_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    """`orch run` (with `extra` overrides) with evaluation pushed past the last step; returns its per-step metrics."""
    from orchestrator.recipe.loader import load_recipe

    warmup = load_recipe(recipe).recipe.train.schedule.warmup_steps
    overrides = [f"train.steps={steps}", f"train.eval_interval={steps + 1}", "train.log_interval=1"]
    if warmup >= steps:  # the recipe schema requires lr warmup below the step count
        overrides.append(f"train.schedule.warmup_steps={steps - 1}")
    run_logged(orch_argv("run", run_dir, str(recipe), *overrides, *extra), run_dir.with_suffix(".log"), logs=run_dir / "logs")
    rows = RunDir(run_dir).metric_rows()
    if len(rows) != steps:
        raise RuntimeError(f"expected {steps} metric rows in {run_dir}, found {len(rows)}")
    return {
        "tokens_per_s": [row["tokens_per_s"] for row in rows],
        "step_s": [row["step_s"] for row in rows],
        "reported_mfu": [row["mfu"] for row in rows],
        "final_loss": rows[-1]["loss"],
    }


def interleaved_medians(recipe: Path, configs: dict[str, tuple[str, ...]], steps: int, warmup_steps: int,
                        repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Every config once per round, rounds repeated (shared machines drift); per-step tokens/s after
    the warmup steps pooled per config. Returns (median tokens/s, last final loss) by config."""
    pooled: dict[str, list[float]] = {name: [] for name in configs}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as scratch:
        for repeat in range(repeats):
            for name, overrides in configs.items():
                run = run_orchestrator(recipe.resolve(), steps, Path(scratch) / f"{name}-{repeat}", overrides)
                pooled[name] += run["tokens_per_s"][warmup_steps:]
                losses[name] = run["final_loss"]
            print(f"round {repeat + 1}/{repeats} done", flush=True)
    return {name: statistics.median(values) for name, values in pooled.items()}, losses


def run_bare(orch_run_dir: Path, steps: int, work: Path) -> dict:
    """bench/bare_deepspeed.py on as many ranks, with the same added environment, as the orch run."""
    from launch.node import toolchain_env

    plan = read_plan(RunDir(orch_run_dir))
    work.mkdir(parents=True)
    out = work / "steps.json"
    argv = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(plan.topology.procs_per_node),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "--log-dir", str(work / "ranks"), "--redirects", "3",  # each rank's own output, for a failure's message
        str(BARE_SCRIPT), "--run-dir", str(orch_run_dir), "--steps", str(steps), "--out", str(out),
    ]
    # The ranks get exactly the environment the orchestrator gave its own: the plan's (on CPU:
    # DS_ACCELERATOR=cpu and OMP_NUM_THREADS = cores / ranks), and the node launcher's toolchain
    # (DeepSpeed's CPU op as scripts/setup.sh built it, not compiled afresh).
    env = {**os.environ, **plan.commands[0].env}
    run_logged(argv, work / "bare.log", env | toolchain_env(env), logs=work / "ranks")
    result = json.loads(out.read_text())
    result["tokens_per_s"] = [result["tokens_per_step"] / s for s in result["step_s"]]
    result["final_loss"] = result["loss"][-1]
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_peak(plan: PlanRecord, seconds: float) -> dict:
    """The whole machine's matmul FLOP/s: fp32 on CPU, bf16 on CUDA.

    On CPU two ways, and the larger counts: one process with all of torch's threads, and the
    ranks' own layout (procs_per_node processes x OMP_NUM_THREADS threads, running together).
    On CUDA one device, times the number of ranks (one per device, all alike).
    """
    import torch

    device = plan.topology.device
    if device == "cuda":
        per_device = _matmul_flops("cuda", torch.bfloat16, MATMUL_SIZE["cuda"], seconds)
        world = plan.topology.world_size
        return {"dtype": "bf16", "peak_flops": per_device * world, "per_device_flops": per_device, "devices": world}
    procs = plan.topology.procs_per_node
    rank_threads = int(plan.commands[0].env.get("OMP_NUM_THREADS", 1))
    single = _matmul_flops("cpu", torch.float32, MATMUL_SIZE["cpu"], seconds)
    concurrent = _concurrent_cpu_matmul(procs, rank_threads, seconds)
    return {
        "dtype": "fp32",
        "peak_flops": max(single, concurrent),
        "one_process_flops": single,
        "one_process_threads": torch.get_num_threads(),
        "rank_layout_flops": concurrent,
        "rank_layout": f"{procs} processes x {rank_threads} thread(s)",
    }


def _matmul_flops(device: str, dtype, size: int, seconds: float) -> float:
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device == "cuda" and count % 20 == 0:
            sync()  # the loop must not run far ahead of the device
    sync()
    return 2 * size**3 * count / (time.perf_counter() - start)


def _matmul_worker(threads: int, seconds: float, barrier, results) -> None:
    import torch

    torch.set_num_threads(threads)
    _matmul_flops("cpu", torch.float32, MATMUL_SIZE["cpu"], 0.3)  # warm caches and the thread pool
    barrier.wait()
    results.put(_matmul_flops("cpu", torch.float32, MATMUL_SIZE["cpu"], seconds))


def _concurrent_cpu_matmul(procs: int, threads: int, seconds: float) -> float:
    """Sum of FLOP/s of `procs` processes multiplying at the same time, like the ranks do."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(procs), context.Queue()
    workers = [context.Process(target=_matmul_worker, args=(threads, seconds, barrier, results)) for _ in range(procs)]
    for worker in workers:
        worker.start()
    total = sum(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def _median_after(values: list[float], warmup: int) -> float:
    return statistics.median(values[warmup:])


def summarise(args: argparse.Namespace, plan: PlanRecord, recipe: Recipe, runs: dict, peak: dict) -> dict:
    flops_per_token = plan.estimate.flops_per_token
    topology = plan.topology
    sides = {}
    for side in ("orch", "bare"):
        pooled = [v for run in runs[side] for v in run["tokens_per_s"][args.warmup_steps :]]
        step_s = [v for run in runs[side] for v in run["step_s"][args.warmup_steps :]]
        tokens_per_s = statistics.median(pooled)
        sides[side] = {
            "tokens_per_s": tokens_per_s,
            "step_ms": 1000 * statistics.median(step_s),
            "mfu": tokens_per_s * flops_per_token / peak["peak_flops"],
            "tokens_per_s_per_run": [_median_after(run["tokens_per_s"], args.warmup_steps) for run in runs[side]],
            "final_loss_per_run": [run["final_loss"] for run in runs[side]],
        }
    reported = [v for run in runs["orch"] for v in run["reported_mfu"][args.warmup_steps :] if v is not None]
    sides["orch"]["mfu_reported_by_orch"] = statistics.median(reported) if reported else None
    return {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "machine": machine("torch", "deepspeed", "transformers", device=topology.device),
        "config": {
            "recipe": repo_relative(args.recipe),
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "repeats": args.repeats,
            "smoke": args.smoke,
            "order": "orch, bare, alternating" if args.repeats > 1 else "orch, bare",
            "topology": {"world_size": topology.world_size, "device": topology.device, "comm_backend": topology.comm_backend},
            "batch": plan.batch.model_dump(),
            "model": {"arch": plan.model.arch, "num_params": plan.model.num_params},
            "zero_stage": recipe.distributed.zero_stage,
            "rank_env": plan.commands[0].env,
            "flops_per_token": flops_per_token,
        },
        "peak": peak,
        "orchestrator": sides["orch"],
        "bare_deepspeed": sides["bare"],
        "ratio_orch_over_bare": sides["orch"]["tokens_per_s"] / sides["bare"]["tokens_per_s"],
        "goal_ratio": 0.97,
        "notes": [
            "tokens/s: median over every step after the warmup steps, pooled over repeats; per step tokens_per_step / step wall time",
            "orchestrator step time is its own (metrics.jsonl): the optimizer step plus its loss all-reduce across ranks",
            "the orchestrator passes a LambdaLR schedule to DeepSpeed; the bare loop passes no lr scheduler",
            "the bare loop reads sequences in order, each rank its own slice; the orchestrator reads a seeded permutation",
            "mfu_reported_by_orch uses the planner's own peak estimate, not the peak measured here",
        ],
    }


def render_table(result: dict) -> str:
    config, peak = result["config"], result["peak"]
    batch, topology = config["batch"], config["topology"]
    if peak["dtype"] == "fp32":
        peak_detail = (f"1 process x {peak['one_process_threads']} threads {peak['one_process_flops'] / 1e9:.1f} GFLOP/s, "
                       f"{peak['rank_layout']} {peak['rank_layout_flops'] / 1e9:.1f} GFLOP/s")
    else:
        peak_detail = f"{peak['devices']} x {peak['per_device_flops'] / 1e12:.1f} TFLOP/s"
    lines = [
        f"{config['recipe']}: {topology['world_size']} ranks on {topology['device']} ({topology['comm_backend']}), "
        f"ZeRO-{config['zero_stage']}, {config['model']['num_params']:,} params",
        f"batch: micro {batch['micro_batch_size']} x accumulation {batch['gradient_accumulation_steps']} x data-parallel "
        f"{batch['data_parallel']} x {batch['seq_len']} tokens = {batch['tokens_per_step']:,} tokens/step",
        f"runs: {config['repeats']} of each ({config['order']}), {config['steps']} steps, first {config['warmup_steps']} left out",
        f"peak ({peak['dtype']} matmul, whole machine): {peak['peak_flops'] / 1e9:,.1f} GFLOP/s ({peak_detail})",
        f"flops/token: {config['flops_per_token'] / 1e6:.2f} M",
        "",
        f"{'':16}{'tokens/s':>10}{'step ms':>10}{'MFU':>8}{'final loss':>12}",
    ]
    for name, key in (("orchestrator", "orchestrator"), ("bare DeepSpeed", "bare_deepspeed")):
        side = result[key]
        lines.append(f"{name:16}{side['tokens_per_s']:>10,.0f}{side['step_ms']:>10.1f}{side['mfu']:>8.1%}"
                     f"{statistics.median(side['final_loss_per_run']):>12.3f}")
    lines.append(f"\norchestrator / bare: {result['ratio_orch_over_bare']:.3f} (goal >= {result['goal_ratio']})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
