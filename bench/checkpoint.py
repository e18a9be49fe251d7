"""What does checkpointing cost? Stall, commit throughput, time to resume, and tokens/s with saves.

Trains `recipes/tiny-pretrain.yaml` through `orch run` in three configurations that alternate
(async, none, sync, async, none, sync, ... for --repeats), because shared machines drift:

- async: a checkpoint every --interval steps, `checkpoint.async_save=true` (the default)
- none:  no periodic checkpoint (interval past the last step); only the final save
- sync:  a checkpoint every --interval steps, `checkpoint.async_save=false`

From the `checkpoint` events of the async and sync runs it reports the stall per save (also as a
fraction of the run's mean step time, and as GB/s of state), and the commit throughput
(bytes / write_s) against the raw disk measured right after each of those runs in the same
checkpoint directory: the same number of bytes written and fsynced by hand, and the saver's own
pipeline done by hand (copy from /dev/shm, fsync, hash). From the three configurations together it
reports median tokens/s per step and over the whole loop. Then one run is SIGKILLed after its first
checkpoint and started again, to time process start -> `resumed` event -> first new metrics row.
Nothing is asserted on the numbers; the goals are commit / raw disk >= 0.8 and, at a checkpoint
every 100 steps, an overhead within 1%.

With --failures it instead measures goodput under injected failures (one SIGKILL of the whole attempt
per --failure-every steps, resumed by the same `orch run`) against Young/Daly's expectation; see
bench/failures.py.

Run it from the repository root (about 5 minutes on a 2-core CPU machine):

    python bench/checkpoint.py [--steps 80] [--interval 10] [--repeats 2] [--out bench/results/checkpoint.json]
    python bench/checkpoint.py --failures [--failure-every 100] [--failure-steps 250] [--failure-intervals opt,50]
    python bench/checkpoint.py [--failures] --smoke --out /tmp/checkpoint.json     # every part, a few steps (the test suite's)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import (DEFAULT_RECIPE, FAST, REPO, events, first_event, machine, orch_argv, parse_args, repo_relative, results_dir,
                    row_after, run_logged, wait_for, write_result)

from disk import probe_disk
from failures import measure_failures
from failures import render as render_failures
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import PlanRecord, read_plan, read_recipe
from orchestrator.rundir.rows import Checkpoint, Completed, Start
from tests.helpers.processes import kill_run
MODES = ("async", "none", "sync")
# A periodic and a final save in each mode, and one kill and resume; with --failures, one kill.
SMOKE = {"steps": 4, "interval": 2, "repeats": 1, "warmup_steps": 1, "resume_interval": 2,
         "failure_baseline_steps": 6, "failure_every": 3, "failure_steps": 5, "failure_intervals": "opt"}


def main() -> None:
    args = _parse_args()
    if args.failures:
        with tempfile.TemporaryDirectory(prefix="orch-failure-bench-", dir=args.scratch) as scratch:
            found = measure_failures(args, Path(scratch), run_training)
        result = {"date": datetime.now().strftime("%Y-%m-%d"), "machine": machine("torch", "deepspeed"),
                  "config": {"recipe": repo_relative(args.recipe), "overrides": FAST, "seed": args.seed, "smoke": args.smoke}, **found}
        print(render_failures(result))
        write_result(args.out or results_dir(args.smoke) / "checkpoint-failures.json", result)
        return
    with tempfile.TemporaryDirectory(prefix="orch-ckpt-bench-", dir=args.scratch) as scratch:
        runs, probes, plan, recipe = _alternate(args, Path(scratch))
        print("kill and resume ...", flush=True)
        resume = measure_resume(args, Path(scratch) / "resume")
    result = summarise(args, plan, recipe, runs, probes, resume)
    print(render_table(result))
    write_result(args.out or results_dir(args.smoke) / "checkpoint.json", result)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per training run")
    parser.add_argument("--interval", type=int, default=10, help="steps between checkpoints in the async and sync runs")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, alternating async, none, sync")
    parser.add_argument("--warmup-steps", type=int, default=5, help="first steps of each run left out of step-time figures")
    parser.add_argument("--resume-interval", type=int, default=5, help="checkpoint interval of the run that is killed")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where run directories and so checkpoints go (the filesystem measured); default the system temp dir")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/checkpoint.json, or checkpoint-failures.json with --failures "
                             "(under bench/results/smoke/ with --smoke)")
    parser.add_argument("--failures", action="store_true",
                        help="instead: goodput under one SIGKILL per --failure-every steps, against Young/Daly (bench/failures.py)")
    parser.add_argument("--failure-every", type=int, default=100, help="steps an attempt runs before it is killed, on average")
    parser.add_argument("--failure-steps", type=int, default=250, help="optimizer steps of each run with failures")
    parser.add_argument("--failure-intervals", default="opt,50",
                        help="checkpoint intervals (steps) of the runs with failures; opt: Young/Daly's, from the baseline")
    parser.add_argument("--failure-baseline-steps", type=int, default=40, help="steps of the run without failures that measures s and C")
    parser.add_argument("--seed", type=int, default=0, help="where in its interval each kill lands")
    args = parse_args(parser, SMOKE)
    args.recipe = args.recipe.resolve()
    if args.steps <= args.warmup_steps:
        parser.error(f"--steps ({args.steps}) must exceed --warmup-steps ({args.warmup_steps})")
    if not 1 <= args.interval < args.steps:
        parser.error(f"--interval ({args.interval}) must be at least 1 and below --steps ({args.steps})")
    if args.repeats < 1 or args.resume_interval < 1:
        parser.error("--repeats and --resume-interval must be at least 1")
    return args


def overrides_for(mode: str, steps: int, interval: int) -> list[str]:
    """`none` pushes the interval past the last step: only the final save, which every run writes."""
    periodic = {"async": [f"checkpoint.interval_steps={interval}", "checkpoint.async_save=true"],
                "sync": [f"checkpoint.interval_steps={interval}", "checkpoint.async_save=false"],
                "none": [f"checkpoint.interval_steps={steps + 1}"]}[mode]
    return [*FAST, f"train.steps={steps}", f"train.eval_interval={steps + 1}", *periodic]


def _alternate(args: argparse.Namespace, scratch: Path) -> tuple[dict, dict, PlanRecord, Recipe]:
    """The runs, the raw disk probes, and the first run's plan and recipe (read here: the scratch
    directory goes once the runs are done)."""
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    probes: dict[str, list[float]] = {"write_fsync_s": [], "copy_fsync_hash_s": []}
    for repeat in range(args.repeats):
        for mode in MODES:
            run_dir = scratch / f"{mode}-{repeat}"
            run = run_training(args.recipe, overrides_for(mode, args.steps, args.interval), run_dir)
            runs[mode].append(run)
            if mode != "none":  # the raw disk, now, in the directory this run's checkpoints went to
                state_bytes = int(statistics.median(e["bytes"] for e in run["checkpoints"]))
                for key, seconds in probe_disk(run_dir / "checkpoints", state_bytes).items():
                    probes[key].extend(state_bytes / s / 1e9 for s in seconds)  # GB/s
            steady = run["tokens_per_s"][args.warmup_steps:]
            print(f"repeat {repeat + 1}/{args.repeats} {mode:5}: {statistics.median(steady):,.0f} tokens/s, "
                  f"{len(run['checkpoints'])} saves", flush=True)
    first = RunDir(scratch / "async-0")
    return runs, probes, read_plan(first), read_recipe(first)


def run_training(recipe: Path, overrides: list[str], run_dir: Path) -> dict:
    """One `orch run` to completion; its per-step metrics and its events."""
    run_logged(orch_argv("run", run_dir, str(recipe), *overrides), run_dir.with_suffix(".log"), logs=run_dir / "logs")
    run = RunDir(run_dir)
    rows, history = run.metric_rows(), run.history()
    times = {e.event: e.time for e in history if isinstance(e, (Start, Completed))}
    return {
        "step_s": [r["step_s"] for r in rows],
        "tokens_per_s": [r["tokens_per_s"] for r in rows],
        "tokens_per_step": rows[0]["tokens_per_s"] * rows[0]["step_s"],
        "loop_s": times["completed"] - times["start"],
        "checkpoints": [{"step": e.step, "stall_s": e.stall_s, "bytes": e.bytes, "write_s": e.write_s}
                        for e in history if isinstance(e, Checkpoint)],
        "summary": read_summary(run),
    }


# -- kill and resume ------------------------------------------------------------------------------


def measure_resume(args: argparse.Namespace, run_dir: Path) -> dict:
    """Start a run, SIGKILL all of it two steps after its first checkpoint, start it again.

    Times are from just before each `orch run` process is started. Synchronous saves here, so a
    kill mid-save leaves only a staging directory in the run (resume sets it aside), nothing in /dev/shm.
    """
    steps = max(args.steps, 4 * args.resume_interval)
    overrides = [*FAST, f"train.steps={steps}", f"train.eval_interval={steps + 1}",
                 f"checkpoint.interval_steps={args.resume_interval}", "checkpoint.async_save=false"]
    argv, log = orch_argv("run", run_dir, str(args.recipe), *overrides), run_dir.with_suffix(".log")
    fresh_t0 = time.time()
    process = _start(argv, log)
    try:
        fresh_row_s = _wait_for_run(lambda: row_after(run_dir, 0), process, run_dir, "metrics row") - fresh_t0
        saved = _wait_for_run(lambda: first_event(run_dir, "checkpoint", fresh_t0), process, run_dir, "checkpoint event")
        _wait_for_run(lambda: row_after(run_dir, saved.step + 1), process, run_dir, "row after the checkpoint")
    finally:
        _kill(run_dir, process)
    fresh_start = first_event(run_dir, "start", fresh_t0)
    t0 = time.time()
    process = _start(argv, log)
    try:
        resumed = _wait_for_run(lambda: first_event(run_dir, "resumed", t0), process, run_dir, "resumed event")
        first_new = _wait_for_run(lambda: row_after(run_dir, resumed.step), process, run_dir, "row after the resume")
    finally:
        _kill(run_dir, process)
    start = first_event(run_dir, "start", t0)
    return {
        "checkpoint": resumed.checkpoint,
        "resumed_step": resumed.step,
        "recomputed_steps": resumed.recomputed_steps,
        "state_bytes": saved.bytes,
        "set_aside": [e.reason for e in events(run_dir, "checkpoint_set_aside")],
        "to_resumed_event_s": resumed.time - t0,
        "to_start_event_s": start.time - t0 if start else None,
        "to_first_resumed_step_s": first_new - t0,
        "fresh_to_start_event_s": fresh_start.time - fresh_t0 if fresh_start else None,
        "fresh_to_first_step_s": fresh_row_s,
    }


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _kill(run_dir: Path, process: subprocess.Popen) -> None:
    kill_run(run_dir)
    process.wait(timeout=30)


def _wait_for_run(found, process: subprocess.Popen, run_dir: Path, what: str):
    """common.wait_for, failing early if the `orch run` process exits first."""
    return wait_for(found, lambda: None if process.poll() is None else f"orch run exited with code {process.returncode}",
                    run_dir.with_suffix(".log"), what, logs=run_dir / "logs")


# -- summary --------------------------------------------------------------------------------------


def summarise(args: argparse.Namespace, plan: PlanRecord, recipe: Recipe, runs: dict, probes: dict, resume: dict) -> dict:
    raw = {key: statistics.median(values) if values else None for key, values in probes.items()}
    return {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "machine": machine("torch", "deepspeed", device=plan.topology.device),
        "config": {
            "recipe": repo_relative(args.recipe),
            "overrides": FAST,
            "steps": args.steps,
            "interval_steps": args.interval,
            "repeats": args.repeats,
            "smoke": args.smoke,
            "order": ", ".join(MODES) + (", alternating" if args.repeats > 1 else ""),
            "warmup_steps": args.warmup_steps,
            "tokens_per_step": plan.batch.tokens_per_step,
            "num_params": plan.model.num_params,
            "zero_stage": recipe.distributed.zero_stage,
        },
        "stall": {mode: stall_figures(runs[mode], runs["none"], args, blocked_includes_write=mode == "sync")
                  for mode in ("async", "sync")},
        "write": write_figures(runs, args.steps, raw),
        "raw_disk_gb_per_s": {**raw, "samples": len(probes["write_fsync_s"]), "per_probe": probes},
        "throughput": throughput_figures(runs, args),
        "resume": resume,
        "goals": {"commit_over_raw_disk": 0.8, "overhead_at_every_100_steps": 0.01},
        "notes": NOTES,
    }


NOTES = [
    "stall_s is the saver's own figure: the time write_shards took (engine save to /dev/shm or to disk, plus a barrier)",
    "sync saves also commit inline (fsync, hash, manifest, rename) before training goes on, which stall_s leaves out: "
    "blocked_s = stall_s + write_s for sync, blocked_s = stall_s for async",
    "stall_s leaves out waiting for a previous async save still in flight; between_step_s_per_save checks the wall clock: "
    "(loop wall - sum of step_s) per run, minus that of the runs without periodic saves, per periodic save",
    "write_s (rank 0): async = copy its files from /dev/shm + fsync + hash + wait for the other rank's list + commit + prune; "
    "sync = fsync + hash + wait + commit of files already written during the stall",
    "raw write_fsync: the same bytes written from memory into one file in the checkpoint directory, fsync of file and directory; "
    "raw copy_fsync_hash: the same bytes copied from /dev/shm, fsynced and hashed by hand: the async saver's pipeline",
    "tokens/s per step excludes the time between steps (saves); wall tokens/s = steps x tokens/step / (completed - start event), "
    "which includes every save, the final one (in every configuration) too",
    "overhead at every 100 steps = blocked_s / (100 x mean step_s)",
]


def stall_figures(runs: list[dict], baseline: list[dict], args: argparse.Namespace, blocked_includes_write: bool) -> dict:
    saves = []
    for run in runs:
        mean_step_s = statistics.mean(run["step_s"][args.warmup_steps:])
        for save in run["checkpoints"]:
            blocked = save["stall_s"] + (save["write_s"] if blocked_includes_write else 0.0)
            saves.append({**save, "blocked_s": blocked, "fraction_of_step": blocked / mean_step_s, "mean_step_s": mean_step_s})
    fraction = statistics.median(s["fraction_of_step"] for s in saves)
    periodic = len(runs[0]["checkpoints"]) - 1
    between = statistics.median(_between_steps_s(r) for r in runs) - statistics.median(_between_steps_s(r) for r in baseline)
    return {
        "saves": len(saves),
        "state_bytes": int(statistics.median(s["bytes"] for s in saves)),
        "stall_s": statistics.median(s["stall_s"] for s in saves),
        "stall_s_max": max(s["stall_s"] for s in saves),
        "blocked_s": statistics.median(s["blocked_s"] for s in saves),
        "blocked_s_max": max(s["blocked_s"] for s in saves),
        "mean_step_s": statistics.median(s["mean_step_s"] for s in saves),
        "blocked_fraction_of_step": fraction,
        "stall_gb_per_s": statistics.median(s["bytes"] / s["stall_s"] / 1e9 for s in saves),
        "blocked_gb_per_s": statistics.median(s["bytes"] / s["blocked_s"] / 1e9 for s in saves),
        "overhead_at_interval": fraction / args.interval,
        "overhead_at_every_100_steps": fraction / 100,
        "between_step_s_per_save": between / periodic if periodic else None,
        "per_save": saves,
    }


def _between_steps_s(run: dict) -> float:
    return run["loop_s"] - sum(run["step_s"])


def write_figures(runs: dict, steps: int, raw: dict) -> dict:
    """Commit throughput, bytes / write_s: periodic saves (training goes on beside an async commit) and final saves apart."""
    found = {}
    for mode in ("async", "sync"):
        saves = [s for run in runs[mode] for s in run["checkpoints"]]
        kinds = {"periodic": [s for s in saves if s["step"] < steps], "final": [s for s in saves if s["step"] == steps]}
        for kind, chosen in kinds.items():
            commit = statistics.median(s["bytes"] / s["write_s"] / 1e9 for s in chosen)
            whole = statistics.median(s["bytes"] / (s["stall_s"] + s["write_s"]) / 1e9 for s in chosen)
            found[f"{mode}_{kind}"] = {
                "saves": len(chosen),
                "write_s": statistics.median(s["write_s"] for s in chosen),
                "commit_gb_per_s": commit,
                "stall_plus_write_gb_per_s": whole,
                "commit_over_raw_write_fsync": commit / raw["write_fsync_s"],
                "commit_over_raw_copy_fsync_hash": commit / raw["copy_fsync_hash_s"] if raw["copy_fsync_hash_s"] else None,
                "stall_plus_write_over_raw_write_fsync": whole / raw["write_fsync_s"],
            }
    return found


def throughput_figures(runs: dict, args: argparse.Namespace) -> dict:
    found = {}
    for mode in MODES:
        pooled = [v for run in runs[mode] for v in run["tokens_per_s"][args.warmup_steps:]]
        wall = [args.steps * run["tokens_per_step"] / run["loop_s"] for run in runs[mode]]
        after, other = _steps_after_saves(runs[mode], args)
        found[mode] = {
            "tokens_per_s": statistics.median(pooled),
            "step_s_after_save": statistics.median(after),
            "step_s_other": statistics.median(other),
            "tokens_per_s_per_run": [statistics.median(run["tokens_per_s"][args.warmup_steps:]) for run in runs[mode]],
            "wall_tokens_per_s": statistics.median(wall),
            "wall_tokens_per_s_per_run": wall,
            "saves_per_run": len(runs[mode][0]["checkpoints"]),
        }
    for mode in ("async", "sync"):
        found[f"{mode}_over_none"] = found[mode]["tokens_per_s"] / found["none"]["tokens_per_s"]
        found[f"{mode}_over_none_wall"] = found[mode]["wall_tokens_per_s"] / found["none"]["wall_tokens_per_s"]
    return found


def _steps_after_saves(runs: list[dict], args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """step_s of the two steps after each periodic save position (an async commit runs beside them) and of the rest.
    Taken at the same positions in the runs without periodic saves, as a control."""
    after, other = [], []
    for run in runs:
        for step, step_s in enumerate(run["step_s"][args.warmup_steps:], start=args.warmup_steps + 1):
            (after if (step - 1) % args.interval < 2 and step > args.interval else other).append(step_s)
    return after, other


def render_table(result: dict) -> str:
    config, stall, write, raw = result["config"], result["stall"], result["write"], result["raw_disk_gb_per_s"]
    lines = [
        f"{config['recipe']} ({', '.join(config['overrides'])}): {config['num_params']:,} params, ZeRO-{config['zero_stage']}, "
        f"{config['tokens_per_step']:,} tokens/step",
        f"runs: {config['repeats']} of each ({config['order']}), {config['steps']} steps, checkpoint every {config['interval_steps']}",
        "",
        f"{'per save':10}{'state MB':>9}{'stall s':>9}{'GB/s':>6}{'blocked s':>10}{'GB/s':>6}{'x step':>8}"
        f"{'per 100 steps':>14}{'wall s/save':>12}",
    ]
    for mode in ("async", "sync"):
        s = stall[mode]
        wall = f"{s['between_step_s_per_save']:.3f}" if s["between_step_s_per_save"] is not None else "-"
        lines.append(f"{mode:10}{s['state_bytes'] / 1e6:>9.1f}{s['stall_s']:>9.3f}{s['stall_gb_per_s']:>6.2f}{s['blocked_s']:>10.3f}"
                     f"{s['blocked_gb_per_s']:>6.2f}{s['blocked_fraction_of_step']:>8.2f}"
                     f"{s['overhead_at_every_100_steps']:>14.2%}{wall:>12}")
    lines += [
        "",
        f"raw disk, same bytes ({raw['samples']} probes): write+fsync {raw['write_fsync_s']:.3f} GB/s, "
        + (f"copy from /dev/shm+fsync+hash {raw['copy_fsync_hash_s']:.3f} GB/s" if raw["copy_fsync_hash_s"] else "no /dev/shm"),
        f"{'commit':16}{'saves':>6}{'write s':>9}{'GB/s':>7}{'/ raw write':>12}{'/ raw pipeline':>15}",
    ]
    for key, w in write.items():
        pipeline = f"{w['commit_over_raw_copy_fsync_hash']:.2f}" if w["commit_over_raw_copy_fsync_hash"] else "-"
        lines.append(f"{key:16}{w['saves']:>6}{w['write_s']:>9.3f}{w['commit_gb_per_s']:>7.3f}"
                     f"{w['commit_over_raw_write_fsync']:>12.2f}{pipeline:>15}")
    tp = result["throughput"]
    lines += ["", f"{'tokens/s':16}{'per step':>10}{'wall':>10}{'saves/run':>10}{'step ms after save':>20}{'other':>7}"]
    for mode in MODES:
        t = tp[mode]
        lines.append(f"{mode:16}{t['tokens_per_s']:>10,.0f}{t['wall_tokens_per_s']:>10,.0f}{t['saves_per_run']:>10}"
                     f"{1000 * t['step_s_after_save']:>20.0f}{1000 * t['step_s_other']:>7.0f}")
    lines.append(f"async / none: {tp['async_over_none']:.3f} per step, {tp['async_over_none_wall']:.3f} wall; "
                 f"sync / none: {tp['sync_over_none']:.3f} per step, {tp['sync_over_none_wall']:.3f} wall")
    r = result["resume"]
    lines += [
        "",
        f"resume from {r['checkpoint']} ({r['recomputed_steps']} steps recomputed): process start -> resumed event "
        f"{r['to_resumed_event_s']:.1f} s -> first new step {r['to_first_resumed_step_s']:.1f} s "
        f"(fresh start -> first step {r['fresh_to_first_step_s']:.1f} s)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
