"""Fault campaign: faults of every kind injected at random moments, each recovered by the same `orch run`
with no human action, bit-exact, and how long each kind keeps the ranks from training.

Trains `recipes/tiny-pretrain.yaml` (2 local ranks) through `orch run`, faults set off by
`ORCH_INJECT_FAULTS` (orchestrator/shared/faults.py has its format):

1. A reference run without faults (--steps steps, a checkpoint every --interval): every step's loss
   and the closing parameter fingerprints the faulty runs must equal, the step time s and the
   checkpoint cost C (median `stall_s` of its periodic saves).
2. For each kind, --repeats runs of the same recipe with one fault at a random step (seeded) on a
   random rank: `crash` (`exit`: the rank ends with exit code 1), `raise` (an exception mid-step), `hang`
   (`stop`: SIGSTOP mid-step, found by the watchdog after `fault_tolerance.timeouts.step_s`), `save_hang`
   (SIGSTOP at the start of a checkpoint save, `timeouts.checkpoint_s`) and `nan` (a NaN loss, rolled
   back in the ranks). A run counts as recovered when it exits 0 with its summary written and its fault
   fired and was followed by a restart (or a rollback); bit-exact when every step's loss and the
   summary's parameter fingerprints equal the reference run's.
3. A goodput run of --goodput-steps steps with a crash (`exit`, random rank) every --failure-every
   steps on average, counted from the step each attempt resumes from as bench/failures.py does, at the
   checkpoint interval Young/Daly picks from the reference's s and C; its summary's goodput against
   Young/Daly's expectation (bench/failures.py's arithmetic), beside an uninterrupted run of the same
   length and interval (the goodput run's bit-exact reference; the reference run itself where both
   are --steps long, as in --smoke).

Each fault's times are from the run's own records: the fault's moment is its marker's mtime (the rank
writes `faults/<fault>` just before it fires); detected is the first `hang`, `attempt_failed` or
`loss_rolled_back` event after it; back is the next attempt's `start` event (written once the
checkpoint is loaded, just before the first step) or the `loss_rolled_back` event; the first new step
ends `step_s` (that step's own time in the final metrics) after back.

Run it from the repository root (about 20 minutes on an idle 2-core machine with the defaults):

    python bench/faults.py [--repeats 4] [--steps 60] [--interval 10] [--goodput-steps 1000] [--failure-every 100]
    python bench/faults.py --smoke --out /tmp/faults.json     # every kind once, a few steps (the test suite's)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import DEFAULT_RECIPE, FAST, REPO, last_lines, machine, orch_argv, parse_args, repo_relative, results_dir, write_result

from failures import young_daly, young_daly_interval
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.recovery_events import AttemptFailed, Hang, LossRolledBack
from orchestrator.rundir.rows import Checkpoint, Resumed, Start, StartedOver
from orchestrator.shared.faults import VARIABLE
from tests.helpers.processes import kill_run


@dataclass(frozen=True)
class Kind:
    fault: str
    """ORCH_INJECT_FAULTS's kind."""
    point: str = "step"
    hang: bool = False
    """Found by the watchdog: the run gets --hang-timeout-s as its step and checkpoint timeouts."""


KINDS = {"crash": Kind("exit"), "raise": Kind("raise"), "hang": Kind("stop", hang=True),
         "save_hang": Kind("stop", point="save", hang=True), "nan": Kind("nan")}
SMOKE = {"repeats": 1, "steps": 8, "interval": 2, "goodput_steps": 8, "failure_every": 4}
MARKER = re.compile(r"\d+-(?P<kind>[a-z]+)@(?P<step>\d+)-(?P<point>[a-z]+)\.rank(?P<rank>\d+)")
DETECTED = (Hang, AttemptFailed, LossRolledBack)
BACK = (Start, LossRolledBack)


def main() -> None:
    args = _parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="orch-fault-bench-", dir=args.scratch) as scratch:
        result = campaign(args, Path(scratch))
    result = {"date": datetime.now().strftime("%Y-%m-%d"),
              "machine": machine("torch", "deepspeed", load_average_before=load_before, load_average_after=os.getloadavg()),
              "config": {"recipe": repo_relative(args.recipe), "overrides": FAST, "seed": args.seed, "smoke": args.smoke,
                         "repeats": args.repeats, "steps": args.steps, "interval_steps": args.interval,
                         "hang_timeout_s": args.hang_timeout_s}, **result}
    print(render(result))
    write_result(args.out or results_dir(args.smoke) / "faults.json", result)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="runs of each fault kind, one fault each (4 x 5 kinds: 20 faults)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, from " + ", ".join(KINDS))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of the reference and of each run of a kind")
    parser.add_argument("--interval", type=int, default=10, help="steps between checkpoints in those runs")
    parser.add_argument("--hang-timeout-s", type=float, default=5.0,
                        help="fault_tolerance.timeouts.step_s and checkpoint_s of the hang kinds' runs")
    parser.add_argument("--goodput-steps", type=int, default=1000,
                        help="optimizer steps of the goodput run (and of its reference): long enough that its one start-up is not most of its badput")
    parser.add_argument("--failure-every", type=int, default=100, help="steps between crashes in the goodput run, on average")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--scratch", type=Path, default=None, help="where the run directories go; default the system temp dir")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/faults.json (under bench/results/smoke/ with --smoke)")
    parser.add_argument("--seed", type=int, default=0, help="the faults' steps and ranks")
    args = parse_args(parser, SMOKE)
    args.recipe = args.recipe.resolve()
    args.kinds = args.kinds.split(",")
    if not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)} (comma-separated), not {','.join(args.kinds)!r}")
    if args.repeats < 1 or not 1 <= args.interval < args.steps or args.failure_every < 2:
        parser.error("--repeats must be at least 1, --interval between 1 and --steps, --failure-every at least 2")
    return args


def campaign(args: argparse.Namespace, scratch: Path) -> dict:
    print(f"reference: {args.steps} steps, a checkpoint every {args.interval} ...", flush=True)
    reference = {**train(args, scratch / "reference", overrides(args.steps, args.interval)), "interval_steps": args.interval}
    if not reference["recovered"]:
        raise SystemExit(f"the reference run failed (exit {reference['exit_code']}): {reference['log_tail']}")
    rng = random.Random(args.seed)
    world = reference["world_size"]
    kinds = {}
    for name in args.kinds:
        runs = []
        for repeat in range(args.repeats):
            spec = draw(KINDS[name], rng, args.steps, args.interval, world)
            timeouts = hang_timeouts(args.hang_timeout_s) if KINDS[name].hang else []
            run = train(args, scratch / f"{name}-{repeat}", overrides(args.steps, args.interval, *timeouts), [spec], reference)
            runs.append(run)
            print(f"{name} {repeat + 1}/{args.repeats} ({spec}): {verdict(run)}", flush=True)
        kinds[name] = summarise_kind(KINDS[name], runs)
    return {"reference": {key: reference[key] for key in ("steps", "interval_steps", "step_s", "checkpoint_cost_s", "goodput")},
            "kinds": kinds, "goodput": measure_goodput(args, scratch, reference, rng)}


def overrides(steps: int, interval: int, *more: str) -> list[str]:
    """Evaluation past the last step, as the other benchmarks train; saves asynchronous (the default)."""
    return [*FAST, f"train.steps={steps}", f"train.eval_interval={steps + 1}", f"checkpoint.interval_steps={interval}", *more]


def hang_timeouts(timeout_s: float) -> list[str]:
    return [f"fault_tolerance.timeouts.step_s={timeout_s}", f"fault_tolerance.timeouts.checkpoint_s={timeout_s}"]


def draw(kind: Kind, rng: random.Random, steps: int, interval: int, world: int) -> str:
    """One fault of `kind` at a random step (a random checkpoint save for `save`, the final one included)
    on a random rank, as ORCH_INJECT_FAULTS names it."""
    step = rng.choice(range(interval, steps + 1, interval)) if kind.point == "save" else rng.randint(1, steps)
    point = ":save" if kind.point == "save" else ""
    return f"{kind.fault}@{step}{point}:rank{rng.randrange(world)}"


def crashes(rng: random.Random, steps: int, interval: int, every: int, world: int) -> list[str]:
    """Crashes `every` steps apart on average, counted from the checkpoint each restart resumes from, each
    drawn uniformly over one checkpoint interval around it (so at a uniform phase of the interval, as
    Young/Daly assumes), each on a random rank; none past the last step."""
    faults, start = [], 0
    while (step := start + rng.randint(every - interval // 2, every + (interval - 1) // 2)) < steps:
        faults.append(f"exit@{step}:rank{rng.randrange(world)}")
        start = (step - 1) // interval * interval  # the newest checkpoint before the crashed step
    return faults


def train(args: argparse.Namespace, run_dir: Path, more: list[str], faults: list[str] = (), reference: dict | None = None) -> dict:
    """One `orch run` with `faults` injected, left alone until it ends (or its time is up): what it recorded."""
    argv = orch_argv("run", run_dir, str(args.recipe), *more)
    env = {k: v for k, v in os.environ.items() if k != VARIABLE} | ({VARIABLE: ",".join(faults)} if faults else {})
    log, limit_s = run_dir.with_suffix(".log"), 300 + 3 * max(args.steps, args.goodput_steps)  # generous: a hang left unfound ends here
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:  # not recovered: end it, and every process naming its run directory
            os.killpg(process.pid, signal.SIGKILL)
            kill_run(run_dir)
            code = process.wait()
    return examine(run_dir, faults, code, time.monotonic() - started, reference, last_lines(log, run_dir / "logs"))


def examine(run_dir: Path, faults: list[str], code: int, wall_s: float, reference: dict | None, log_tail: str) -> dict:
    run = RunDir(run_dir)
    history, rows = run.history() if run.events.exists() else [], run.metric_rows() if run.metrics.exists() else []
    summary = read_summary(run) if run.summary.exists() else None
    found = recoveries(run_dir, history, rows)
    checkpoints = [{"step": e.step, "stall_s": e.stall_s, "write_s": e.write_s} for e in history if isinstance(e, Checkpoint)]
    periodic = [c["stall_s"] for c in checkpoints if rows and c["step"] < rows[-1]["step"]]
    losses = [(r["step"], r["loss"]) for r in rows]
    fingerprints = summary.param_fingerprints if summary else None
    recovered = code == 0 and bool(summary and summary.completed) and len(found) == len(faults) and all(r["back_s"] is not None for r in found)
    starts = [e for e in history if isinstance(e, Start)]
    result = {
        "faults": faults, "exit_code": code, "wall_s": wall_s, "recovered": recovered,
        "bit_exact": None if reference is None else recovered and losses == reference["losses"] and fingerprints == reference["fingerprints"],
        "recoveries": found,
        "attempts_failed": [e.failure for e in history if isinstance(e, AttemptFailed)],
        "rollbacks": sum(isinstance(e, LossRolledBack) for e in history),
        "steps": len(rows), "step_s": statistics.median(r["step_s"] for r in rows) if rows else None,
        "productive_s": sum(r["step_s"] for r in rows), "checkpoints": checkpoints,
        "checkpoint_cost_s": statistics.median(periodic) if periodic else None,
        "goodput": summary.goodput if summary else None, "summary_wall_s": summary.wall_s if summary else None,
        "world_size": starts[0].world_size if starts else None,
        "losses": losses, "fingerprints": fingerprints,
    }
    if not recovered or result["bit_exact"] is False:
        result["log_tail"] = log_tail
    return result


def recoveries(run_dir: Path, history: list, rows: list) -> list[dict]:
    """Each fault that fired (its marker, oldest first) and what followed it: see the module's docstring."""
    step_s = {r["step"]: r["step_s"] for r in rows}
    markers = sorted((run_dir / "faults").glob("*"), key=lambda p: p.stat().st_mtime) if (run_dir / "faults").is_dir() else []
    found = []
    for marker in markers:
        at, fault = marker.stat().st_mtime, MARKER.fullmatch(marker.name)
        detected = next((e for e in history if isinstance(e, DETECTED) and e.time >= at), None)
        back = next((e for e in history if isinstance(e, BACK) and detected and e.time >= detected.time), None)
        resumed_step = None if back is None else back.step if isinstance(back, Start) else back.checkpoint_step
        recomputed = next((e.recomputed_steps for e in history if isinstance(e, (Resumed, StartedOver, LossRolledBack))
                           and detected and back and detected.time <= e.time <= back.time), None)
        first_step_s = step_s.get(resumed_step + 1) if resumed_step is not None else None
        found.append({
            "fault": f"{fault['kind']}@{fault['step']}" + (":save" if fault["point"] == "save" else "") + f":rank{fault['rank']}",
            "time": at,
            "failure": detected.failure if isinstance(detected, AttemptFailed) else detected.event if detected else None,
            "timeout_s": detected.timeout_s if isinstance(detected, Hang) else None,
            "detected_s": detected.time - at if detected else None,
            "back_s": back.time - at if back else None,
            "resumed_step": resumed_step, "recomputed_steps": recomputed,
            "first_new_step_s": back.time - at + first_step_s if back and first_step_s is not None else None,
        })
    return found


def verdict(run: dict) -> str:
    if not run["recovered"]:
        return f"NOT RECOVERED (exit {run['exit_code']}, {len(run['recoveries'])} of {len(run['faults'])} faults fired)"
    times = ", ".join(f"{r['first_new_step_s']:.2f} s" for r in run["recoveries"] if r["first_new_step_s"] is not None)
    return f"recovered, {'bit-exact' if run['bit_exact'] else 'NOT BIT-EXACT'}, fault -> first new step {times}"


def summarise_kind(kind: Kind, runs: list[dict]) -> dict:
    found = [r for run in runs for r in run["recoveries"]]

    def spread(key: str) -> dict:
        values = [r[key] for r in found if r[key] is not None]
        return {"median": statistics.median(values), "max": max(values)} if values else {"median": None, "max": None}

    return {"fault": kind.fault + (":save" if kind.point == "save" else ""), "runs": len(runs),
            "recovered": sum(run["recovered"] for run in runs), "bit_exact": sum(bool(run["bit_exact"]) for run in runs),
            "detected_s": spread("detected_s"), "back_s": spread("back_s"), "first_new_step_s": spread("first_new_step_s"),
            "failure_classes": sorted({r["failure"] for r in found if r["failure"]}),
            "extra_failures": sum(max(0, len(run["attempts_failed"]) + run["rollbacks"] - len(run["recoveries"])) for run in runs),
            "details": [_without_series(run) for run in runs]}


def measure_goodput(args: argparse.Namespace, scratch: Path, reference: dict, rng: random.Random) -> dict:
    """A crash every --failure-every steps at Young/Daly's interval, against its expectation."""
    step_s, cost_s = reference["step_s"], reference["checkpoint_cost_s"]
    interval_s, interval = young_daly_interval(step_s, cost_s, args.failure_every)
    faults = crashes(rng, args.goodput_steps, interval, args.failure_every, reference["world_size"])
    more = overrides(args.goodput_steps, interval, f"fault_tolerance.max_restarts={max(3, len(faults))}")
    baseline = reference
    if args.goodput_steps != args.steps:  # else the reference serves: the losses do not depend on the interval
        print(f"goodput: without faults, {args.goodput_steps} steps, a checkpoint every {interval} ...", flush=True)
        baseline = {**train(args, scratch / "goodput-reference", more), "interval_steps": interval}
        if not baseline["recovered"]:
            raise SystemExit(f"the goodput run's reference failed (exit {baseline['exit_code']}): {baseline['log_tail']}")
    print(f"goodput: {len(faults)} crashes ({','.join(faults)}), {args.goodput_steps} steps, a checkpoint every {interval} ...", flush=True)
    run = train(args, scratch / "goodput", more, faults, baseline)
    print(f"goodput: {verdict(run)}", flush=True)
    expected = young_daly(_as_failures_run(run), interval, args.failure_every) if run["recovered"] else None
    return {"steps": args.goodput_steps, "failure_every_steps": args.failure_every, "mtbf_s": args.failure_every * step_s,
            "young_daly_interval_s": interval_s, "young_daly_interval_steps": interval,
            "without_faults": {"goodput": baseline["goodput"], "interval_steps": baseline["interval_steps"]},
            "run": _without_series(run), "young_daly": expected}


def _as_failures_run(run: dict) -> dict:
    """The goodput run as bench/failures.py's young_daly reads one: R from the fault to the next start."""
    restarts = [{"restart_cost_s": r["back_s"], "recomputed_steps": r["recomputed_steps"], "restart_to_first_new_step_s": r["first_new_step_s"]}
                for r in run["recoveries"]]
    return {"step_s": run["step_s"], "restarts": restarts, "checkpoints": run["checkpoints"], "rows": run["steps"],
            "summary": {"goodput": run["goodput"], "wall_s": run["summary_wall_s"]}, "productive_s": run["productive_s"]}


def _without_series(run: dict) -> dict:
    return {key: value for key, value in run.items() if key not in ("losses", "fingerprints", "checkpoints")}


def render(result: dict) -> str:
    ref, seconds = result["reference"], lambda v: "-" if v is None else f"{v:.2f}"
    lines = [f"reference: {ref['steps']} steps, s = {ref['step_s'] * 1000:.0f} ms/step, C = {ref['checkpoint_cost_s'] * 1000:.0f} ms/save, "
             f"goodput {ref['goodput']:.3f}",
             f"{'kind':<10}{'fault':<11}{'recovered':>10}{'bit-exact':>10}{'detected s':>11}{'fault -> first new step s':>27}  class",
             f"{'':<10}{'':<11}{'':>10}{'':>10}{'median':>11}{'median':>14}{'max':>13}"]
    for name, kind in result["kinds"].items():
        first = kind["first_new_step_s"]
        lines.append(f"{name:<10}{kind['fault']:<11}{kind['recovered']:>6}/{kind['runs']:<3}{kind['bit_exact']:>6}/{kind['runs']:<3}"
                     f"{seconds(kind['detected_s']['median']):>11}{seconds(first['median']):>14}{seconds(first['max']):>13}  "
                     f"{','.join(kind['failure_classes'])}" + (f" ({kind['extra_failures']} extra)" if kind["extra_failures"] else ""))
    g, run = result["goodput"], result["goodput"]["run"]
    lines.append(f"goodput: a crash every ~{g['failure_every_steps']} steps (M = {g['mtbf_s']:.1f} s), Young/Daly tau = "
                 f"{g['young_daly_interval_s']:.2f} s = {g['young_daly_interval_steps']} steps; {len(run['faults'])} crashes in {g['steps']} steps: "
                 f"{verdict(run)}")
    if g["young_daly"]:
        e = g["young_daly"]["expected"]
        lines.append(f"goodput measured {run['goodput']:.3f} (without faults {g['without_faults']['goodput']:.3f}); expected, first order "
                     f"{e['goodput']:.3f} (C/tau {e['waste_terms']['checkpoint']:.3f} + tau/2M {e['waste_terms']['lost_work']:.3f} + "
                     f"R/M {e['waste_terms']['restart']:.3f}, R = {g['young_daly']['restart_cost_s']:.2f} s), this run's model "
                     f"{e['goodput_over_this_run']:.3f}; measured / expected {g['young_daly']['measured_over_expected_goodput']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
