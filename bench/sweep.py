"""What does a sweep cost beyond its trials, and what does pruning save?

On the tiny recipe, one grid of learning rates (some good, some far too large or too small),
measured side by side in one run:

- `none`: `orch sweep --local` with pruning off: every trial trains to its last step.
- `alone`: each of those trials' own recipes (their `recipe.yaml`) trained by `orch run`, one after
  another: what the trials cost without a sweep around them.
- `median`: the same sweep with the median pruner (one finished trial before it judges).

The orchestration overhead is the `none` sweep's wall time against the sum of the `alone` runs'
(goal: within 5%: the study's journal, the pruning checks at each evaluation, the report). Pruning's
saving is the share of training steps and of wall time the `median` sweep did not spend, and
whether it found the same best trial.

    python bench/sweep.py [--steps 40] [--learning-rates 0.003,0.001,...] [--out bench/results/sweep.json]     (about 8 minutes here)
    python bench/sweep.py --smoke --out /tmp/sweep.json     # one trial, 4 steps (the test suite's)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import FAST, REPO, RESULTS, machine, parse_args, run_logged, write_result

from orchestrator.rundir.layout import RunDir

RECIPE = REPO / "recipes" / "tiny-sweep.yaml"
LEARNING_RATES = [0.003, 0.001, 0.3, 0.0002, 3.0, 0.006]
SMOKE = {"steps": 4, "learning_rates": "0.003"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--learning-rates", default=",".join(map(str, LEARNING_RATES)), help="the grid, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep.json")
    args = parse_args(parser, SMOKE)
    if args.steps < 4:
        parser.error(f"--steps ({args.steps}) must be at least 4: an evaluation every quarter of the run")
    rates = [float(rate) for rate in args.learning_rates.split(",")]
    overrides = [*FAST, *_parallel_for(len(rates)), "train.log_interval=10", f"train.steps={args.steps}", f"train.eval_interval={args.steps // 4}", "train.eval_batches=2",
                 "train.grad_clip=null", f"sweep.parameters={{train.optimizer.lr: {{choices: {rates}}}}}", "sweep.sampler=grid",
                 f"sweep.trials={len(rates)}", "sweep.pruner.startup_trials=1", "sweep.pruner.warmup_steps=0"]
    with tempfile.TemporaryDirectory(prefix="orch-sweep-bench-") as scratch:
        work = Path(scratch)
        none = sweep(work / "none", [*overrides, "sweep.pruner.kind=none"])
        alone = trials_alone(work / "none", work / "alone")
        median = sweep(work / "median", [*overrides, "sweep.pruner.kind=median"])
    result = {
        "date": datetime.now().strftime("%Y-%m-%d"), "machine": machine("torch", "deepspeed", "optuna"),
        "config": {"recipe": "recipes/tiny-sweep.yaml", "learning_rates": rates, "steps": args.steps, "smoke": args.smoke,
                   "overrides": overrides},
        "none": none, "alone": alone, "median": median,
        "summary": {
            "overhead_sweep_over_trials_alone": round(none["wall_s"] / alone["wall_s"], 3),
            "pruning_steps_saved": round(1 - median["steps"] / none["steps"], 3),
            "pruning_wall_saved": round(1 - median["wall_s"] / none["wall_s"], 3),
            "same_best_trial": none["best"] == median["best"],
        },
    }
    print(json.dumps(result["summary"], indent=1))
    write_result(args.out, result)


def _parallel_for(trials: int) -> list[str]:
    """The recipe's trials at once, or as many as there are where that is fewer (a sweep refuses more)."""
    from orchestrator.recipe.loader import load_recipe

    parallel = load_recipe(RECIPE).recipe.sweep.parallel
    return [f"sweep.parallel={trials}"] if trials < parallel else []


def sweep(directory: Path, overrides: list[str]) -> dict:
    """One local sweep, timed; its trials' steps and states from their run directories and the report."""
    start = time.perf_counter()
    run_logged([sys.executable, "-m", "orchestrator", "sweep", str(RECIPE), *overrides, "--local",
                "--sweep-dir", str(directory)], directory.with_suffix(".log"), logs=directory / "trials")
    wall = time.perf_counter() - start
    trials = sorted((directory / "trials").iterdir())
    steps = [max((r["step"] for r in RunDir(t).metric_rows()), default=0) for t in trials]
    table = [line.split() for line in directory.with_suffix(".log").read_text().splitlines() if line[:1].isdigit()]
    return {"wall_s": round(wall, 1), "steps": sum(steps), "steps_per_trial": steps,
            "states": {row[1]: row[2] for row in table}, "best": table[0][1] if table else None}


def trials_alone(swept: Path, directory: Path) -> dict:
    """Each trial's recipe trained again by `orch run`, one after another."""
    directory.mkdir()
    start = time.perf_counter()
    for trial in sorted((swept / "trials").iterdir()):
        run_dir = directory / trial.name
        run_logged([sys.executable, "-m", "orchestrator", "run", str(trial / "recipe.yaml"), "--run-dir", str(run_dir)],
                   directory / f"{trial.name}.log", logs=run_dir / "logs")
    return {"wall_s": round(time.perf_counter() - start, 1), "runs": len(list(directory.glob("*.log")))}


if __name__ == "__main__":
    main()
