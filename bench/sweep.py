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

    python bench/sweep.py [--steps 40] [--out bench/results/sweep.json]     (about 8 minutes here)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import FAST, REPO, machine, read_jsonl, run_logged, write_result

LEARNING_RATES = [0.003, 0.001, 0.3, 0.0002, 3.0, 0.006]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sweep.json")
    args = parser.parse_args()
    overrides = [*FAST, "train.log_interval=10", f"train.steps={args.steps}", f"train.eval_interval={args.steps // 4}", "train.eval_batches=2",
                 "train.grad_clip=null", f"sweep.parameters={{train.optimizer.lr: {{choices: {LEARNING_RATES}}}}}", "sweep.sampler=grid",
                 f"sweep.trials={len(LEARNING_RATES)}", "sweep.pruner.startup_trials=1", "sweep.pruner.warmup_steps=0"]
    with tempfile.TemporaryDirectory(prefix="orch-sweep-bench-") as scratch:
        work = Path(scratch)
        none = sweep(work / "none", [*overrides, "sweep.pruner.kind=none"])
        alone = trials_alone(work / "none", work / "alone")
        median = sweep(work / "median", [*overrides, "sweep.pruner.kind=median"])
    result = {
        "date": datetime.now().strftime("%Y-%m-%d"), "machine": machine("torch", "deepspeed", "optuna"),
        "config": {"recipe": "recipes/tiny-sweep.yaml", "learning_rates": LEARNING_RATES, "steps": args.steps, "overrides": overrides},
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


def sweep(directory: Path, overrides: list[str]) -> dict:
    """One local sweep, timed; its trials' steps and states from their run directories and the report."""
    start = time.perf_counter()
    run_logged([sys.executable, "-m", "orchestrator", "sweep", str(REPO / "recipes" / "tiny-sweep.yaml"), *overrides, "--local",
                "--sweep-dir", str(directory)], directory.with_suffix(".log"))
    wall = time.perf_counter() - start
    trials = sorted((directory / "trials").iterdir())
    steps = [max((r["step"] for r in read_jsonl(t / "metrics.jsonl")), default=0) for t in trials]
    table = [line.split() for line in directory.with_suffix(".log").read_text().splitlines() if line[:1].isdigit()]
    return {"wall_s": round(wall, 1), "steps": sum(steps), "steps_per_trial": steps,
            "states": {row[1]: row[2] for row in table}, "best": table[0][1] if table else None}


def trials_alone(swept: Path, directory: Path) -> dict:
    """Each trial's recipe trained again by `orch run`, one after another."""
    directory.mkdir()
    start = time.perf_counter()
    for trial in sorted((swept / "trials").iterdir()):
        run_logged([sys.executable, "-m", "orchestrator", "run", str(trial / "recipe.yaml"), "--run-dir", str(directory / trial.name)],
                   directory / f"{trial.name}.log")
    return {"wall_s": round(time.perf_counter() - start, 1), "runs": len(list(directory.glob("*.log")))}


if __name__ == "__main__":
    main()
