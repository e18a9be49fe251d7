"""Goodput under injected failures, for `bench/checkpoint.py --failures`: one SIGKILL of the whole
attempt per N steps on average, resumed by running the same `orch run` again, against Young/Daly.

1. A run without failures (a checkpoint every 5 steps) measures the step time s and the checkpoint
   cost C (the saver's `stall_s`, which is what an async save blocks), so MTBF M = N x s and the
   Young/Daly interval sqrt(2 x C x M) can be chosen before the failure runs.
2. Each failure run (at that interval, and at each other interval asked for) kills every attempt once
   it has run n steps past the step it started from, n uniform over one checkpoint interval around N
   (seeded), so failures land at a uniform phase of the interval as Young/Daly assumes; then waits
   until all of the attempt's processes are gone and starts the same command again.

Goodput is the product's own (`summary.json`): the final rows' step time over the wall time from
the first attempt's `start` event to the end. R, the restart cost, is from the kill to the next
attempt's `start` event (written once the checkpoint is loaded, just before the first step).
"""

from __future__ import annotations

import math
import os
import random
import signal
import statistics
import subprocess
import time
from pathlib import Path

import psutil
from common import FAST, REPO, events, first_event, last_lines, orch_argv, row_after, wait_for

from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from tests.helpers.processes import kill_run

BASELINE_INTERVAL = 5  # saves often enough to measure C well


def measure_failures(args, scratch: Path, run_training) -> dict:
    """`run_training(recipe, overrides, run_dir)` is checkpoint.py's: one run to completion."""
    base_overrides = _overrides(args.failure_baseline_steps, BASELINE_INTERVAL)
    print(f"failures: baseline, {args.failure_baseline_steps} steps, a checkpoint every {BASELINE_INTERVAL} ...", flush=True)
    baseline = run_training(args.recipe, base_overrides, scratch / "baseline")
    step_s = statistics.median(baseline["step_s"][args.warmup_steps:])
    cost_s = statistics.median(c["stall_s"] for c in baseline["checkpoints"][:-1])
    mtbf_s = args.failure_every * step_s
    optimum_s, optimum = young_daly_interval(step_s, cost_s, args.failure_every)
    intervals = [optimum if i == "opt" else int(i) for i in args.failure_intervals.split(",")]
    rng = random.Random(args.seed)
    runs = []
    for interval in intervals:
        print(f"failures: a kill every ~{args.failure_every} steps, a checkpoint every {interval} ...", flush=True)
        run = run_with_failures(args, scratch / f"kill-every-{args.failure_every}-interval-{interval}", interval, rng)
        runs.append({**run, **young_daly(run, interval, args.failure_every)})
    return {
        "baseline": {"steps": args.failure_baseline_steps, "interval_steps": BASELINE_INTERVAL, "step_s": step_s,
                     "checkpoint_cost_s": cost_s, "goodput": baseline["summary"].goodput, "saves": len(baseline["checkpoints"])},
        "failure_every_steps": args.failure_every,
        "steps": args.failure_steps,
        "mtbf_s": mtbf_s,
        "young_daly_interval_s": optimum_s,
        "young_daly_interval_steps": optimum,
        "runs": runs,
    }


def young_daly_interval(step_s: float, cost_s: float, failure_every: int) -> tuple[float, int]:
    """Young/Daly's checkpoint interval sqrt(2 x C x M), M = failure_every x step_s: in seconds, and in
    whole steps (at least 1)."""
    optimum_s = math.sqrt(2 * cost_s * (failure_every * step_s))
    return optimum_s, max(1, round(optimum_s / step_s))


def _overrides(steps: int, interval: int) -> list[str]:
    return [*FAST, f"train.steps={steps}", f"train.eval_interval={steps + 1}", f"checkpoint.interval_steps={interval}",
            "checkpoint.async_save=true"]


def run_with_failures(args, run_dir: Path, interval: int, rng: random.Random) -> dict:
    argv, log = orch_argv("run", run_dir, str(args.recipe), *_overrides(args.failure_steps, interval)), run_dir.with_suffix(".log")
    restarts, launched = [], time.time()
    while True:
        process = _start(argv, log)
        start = _wait(lambda: first_event(run_dir, "start", launched), process, run_dir, "start event")
        if restarts:  # this attempt's own figures, from the kill before it
            resumed = first_event(run_dir, "resumed", launched)
            first_new = _wait(lambda: row_after(run_dir, start.step), process, run_dir, "row after the resume")
            restarts[-1].update(restart_to_resumed_s=resumed.time - launched if resumed else None,
                                restart_to_start_s=start.time - launched, restart_to_first_new_step_s=first_new - launched,
                                restart_cost_s=start.time - restarts[-1]["kill_time"], resumed_step=start.step,
                                recomputed_steps=resumed.recomputed_steps if resumed else None)
        run_for = rng.randint(args.failure_every - interval // 2, args.failure_every + (interval - 1) // 2)
        if start.step + run_for >= args.failure_steps:  # the run ends before the next failure is due
            code = process.wait(timeout=600)
            if code != 0:
                raise RuntimeError(f"the last attempt of {run_dir} exited with code {code}; {last_lines(log, run_dir / 'logs')}")
            break
        _wait(lambda: row_after(run_dir, start.step + run_for - 1), process, run_dir, f"step {start.step + run_for}")
        kill_time = time.time()
        _kill_attempt(run_dir, process)
        rows = RunDir(run_dir).metric_rows()
        restarts.append({"kill_time": kill_time, "killed_after_step": max(r["step"] for r in rows),
                         "processes_gone_s": time.time() - kill_time})
        launched = time.time()
    summary, rows = read_summary(RunDir(run_dir)), RunDir(run_dir).metric_rows()
    return {"interval_steps": interval, "restarts": restarts,
            "summary": {"goodput": summary.goodput, "wall_s": summary.wall_s, "restarts": summary.restarts},
            "rows": len(rows), "productive_s": sum(r["step_s"] for r in rows), "step_s": statistics.median(r["step_s"] for r in rows),
            "checkpoints": [{"step": e.step, "stall_s": e.stall_s, "write_s": e.write_s} for e in events(run_dir, "checkpoint")]}


def young_daly(run: dict, interval: int, failure_every: int) -> dict:
    """The expectation beside the measurement, with this run's own step time s, C (median stall of its
    periodic saves) and mean R.

    First order (Young/Daly): waste = C/tau + tau/(2M) + R/M, tau = interval x s, M = N x s.
    Over this run's own failures (k of them, S steps): wall = S s (1 + C/tau) + k (R + tau/2), goodput = S s / wall.
    """
    s, k = run["step_s"], len(run["restarts"])
    cost_s = statistics.median(c["stall_s"] for c in run["checkpoints"] if c["step"] < run["rows"])
    restart_s = statistics.mean(r["restart_cost_s"] for r in run["restarts"]) if k else 0.0
    tau, mtbf = interval * s, failure_every * s
    waste = {"checkpoint": cost_s / tau, "lost_work": tau / (2 * mtbf), "restart": restart_s / mtbf}
    useful = run["rows"] * s
    wall = useful * (1 + cost_s / tau) + k * (restart_s + tau / 2)
    measured_wall = run["summary"]["wall_s"]
    lost = sum(r["recomputed_steps"] or 0 for r in run["restarts"]) * s
    saves = sum(c["stall_s"] for c in run["checkpoints"])
    restarts = sum(r["restart_cost_s"] for r in run["restarts"])
    return {
        "checkpoint_cost_s": cost_s,
        "restart_cost_s": restart_s,
        "first_new_step_s": statistics.mean(r["restart_to_first_new_step_s"] for r in run["restarts"]) if k else None,
        "expected": {"waste_terms": waste, "waste": sum(waste.values()), "goodput": 1 - sum(waste.values()),
                     "goodput_over_this_run": useful / wall},
        "measured": {"goodput": run["summary"]["goodput"], "waste": 1 - run["summary"]["goodput"],
                     "waste_terms": {"checkpoint": saves / measured_wall, "lost_work": lost / measured_wall,
                                     "restart": restarts / measured_wall,
                                     "other": (measured_wall - run["productive_s"] - saves - lost - restarts) / measured_wall}},
        "measured_over_expected_goodput": run["summary"]["goodput"] / (1 - sum(waste.values())),
        "measured_over_expected_goodput_over_this_run": run["summary"]["goodput"] / (useful / wall),
    }


def render(result: dict) -> str:
    b = result["baseline"]
    lines = [
        f"failures: s = {b['step_s'] * 1000:.0f} ms/step, C = {b['checkpoint_cost_s'] * 1000:.0f} ms/save (baseline, "
        f"{b['saves']} saves, goodput {b['goodput']:.3f}), M = {result['failure_every_steps']} steps = {result['mtbf_s']:.1f} s, "
        f"Young/Daly tau = sqrt(2CM) = {result['young_daly_interval_s']:.2f} s = {result['young_daly_interval_steps']} steps",
        f"{'interval':>9}{'kills':>6}{'C ms':>6}{'R s':>6}{'->step s':>9}{'waste exp':>10}{'(C/tau':>8}{'tau/2M':>7}{'R/M)':>6}"
        f"{'goodput exp':>12}{'this run':>9}{'measured':>9}{'/ exp':>7}{'/ run':>7}",
    ]
    for r in result["runs"]:
        e, w = r["expected"], r["expected"]["waste_terms"]
        first = f"{r['first_new_step_s']:.1f}" if r["first_new_step_s"] is not None else "-"
        lines.append(f"{r['interval_steps']:>9}{len(r['restarts']):>6}{r['checkpoint_cost_s'] * 1000:>6.0f}{r['restart_cost_s']:>6.1f}{first:>9}{e['waste']:>10.3f}"
                     f"{w['checkpoint']:>8.3f}{w['lost_work']:>7.3f}{w['restart']:>6.3f}{e['goodput']:>12.3f}"
                     f"{e['goodput_over_this_run']:>9.3f}{r['measured']['goodput']:>9.3f}"
                     f"{r['measured_over_expected_goodput']:>7.2f}{r['measured_over_expected_goodput_over_this_run']:>7.2f}")
    lines.append("measured waste, share of wall: " + "; ".join(
        f"interval {r['interval_steps']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["measured"]["waste_terms"].items())
        for r in result["runs"]))
    return "\n".join(lines)


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait(found, process: subprocess.Popen, run_dir: Path, what: str):
    return wait_for(found, lambda: None if process.poll() is None else f"orch run exited with code {process.returncode}",
                    run_dir.with_suffix(".log"), what, logs=run_dir / "logs")


def _kill_attempt(run_dir: Path, process: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGKILL the attempt's process group and anything else naming its run directory, then wait until
    none is left (a new `orch run` is refused while an earlier attempt's processes live)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kill_run(run_dir)
    process.wait(timeout=30)
    deadline = time.monotonic() + timeout_s
    while _alive(run_dir):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {run_dir} still alive {timeout_s:.0f} s after SIGKILL")
        kill_run(run_dir)
        time.sleep(0.05)


def _alive(run_dir: Path) -> bool:
    for p in psutil.process_iter(["cmdline", "status"]):
        if str(run_dir) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            return True
    return False
