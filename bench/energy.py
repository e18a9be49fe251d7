"""Overhead of the energy monitor on training throughput (goal: under 0.5%).

Two measurements, side by side in one run:
1. End to end: the same recipe through `orch run` with the monitor off, on at its default
   interval (1 s), and on at 0.1 s, interleaved round by round because shared machines drift;
   per-step tokens/s after the warmup steps are pooled and the medians compared with "off".
2. The cost of one sample (every meter read, the phase split and the record's rewrite), timed on
   this machine's real meters; at one sample per interval this bounds the share of one core the
   monitor takes, which is far below what end-to-end timing on a noisy machine can resolve.

Run it from the repository root (about 3 minutes on a 2-core CPU machine):

    python bench/energy.py [--steps 40] [--warmup-steps 5] [--repeats 3] [--configs off,on-1s,on-0.1s]
                           [--out bench/results/energy.json]
    python bench/energy.py --smoke --out /tmp/energy.json     # off and on at 0.1 s, a few steps (the test suite's)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import DEFAULT_RECIPE, RESULTS, chosen, parse_args, write_result
from throughput import interleaved_medians

CONFIGS = {
    "off": ("energy.enabled=false",),
    "on-1s": ("energy.interval_s=1.0",),
    "on-0.1s": ("energy.interval_s=0.1",),
}
GOAL = 0.005
SMOKE = {"steps": 3, "warmup_steps": 1, "repeats": 1, "configs": "off,on-0.1s", "samples": 20}


def sample_cost_s(samples: int) -> float:
    """Wall seconds per sample of the monitor with this machine's node meters (the local leader's set)."""
    from orchestrator.shared.energy.hardware import cpu_power
    from launch.energy.meters import node_meters
    from launch.energy.monitor import EnergyMonitor

    with tempfile.TemporaryDirectory() as scratch:
        monitor = EnergyMonitor(node_meters(cpu_power("bench", 2), 0.375), Path(scratch), "bench", 0, 1.0)
        tic = time.perf_counter()
        for step in range(samples):
            monitor.phase("train", step)
            monitor.flush()
        return (time.perf_counter() - tic) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, off included")
    parser.add_argument("--samples", type=int, default=200, help="monitor samples timed for the cost of one")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--out", type=Path, default=RESULTS / "energy.json")
    args = parse_args(parser, SMOKE)
    configs = chosen(CONFIGS, args.configs, "off")
    medians, _ = interleaved_medians(args.recipe, configs, args.steps, args.warmup_steps, args.repeats)
    cost = sample_cost_s(args.samples)
    result = {
        "recipe": str(args.recipe), "steps": args.steps, "warmup_steps": args.warmup_steps, "repeats": args.repeats,
        "smoke": args.smoke,
        "tokens_per_s": medians,
        "overhead_end_to_end": {name: 1 - medians[name] / medians["off"] for name in configs if name != "off"},
        "sample_cost_ms": cost * 1000,
        "core_share_at_1s": cost / 1.0,
        "goal": GOAL,
    }
    print(f"{'config':<10}{'tokens/s':>12}{'overhead':>12}")
    for name in configs:
        overhead = result["overhead_end_to_end"].get(name)
        print(f"{name:<10}{medians[name]:>12,.0f}{'' if overhead is None else f'{overhead:>12.2%}'}")
    print(f"one sample: {cost * 1000:.3f} ms -> {cost:.3%} of one core at the default 1 s interval (goal: overhead < {GOAL:.1%})")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
