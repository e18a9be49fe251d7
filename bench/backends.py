"""Horovod against DeepSpeed ZeRO-0, 1 and 2: tokens/s of the same recipe through `orch run`.

Each round runs the four back to back (Horovod, ZeRO-0, ZeRO-1, ZeRO-2) on the same ranks, data,
model and batch, and rounds repeat (--repeats), because shared machines drift. Per-step tokens/s
after the warmup steps are pooled per backend; the medians are compared with ZeRO-0, the DeepSpeed
configuration that does what Horovod does (a full replica per rank, one all-reduce of the
gradients). Nothing is asserted on the numbers.

Run it from the repository root (about 3 minutes on a 2-core CPU machine; needs `make horovod`):

    python bench/backends.py [--steps 30] [--warmup-steps 5] [--repeats 2] [--backends horovod,zero0,zero1,zero2]
                             [--out bench/results/backends.json]
    python bench/backends.py --smoke --out /tmp/backends.json     # Horovod and ZeRO-0, a few steps (the test suite's)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import DEFAULT_RECIPE, RESULTS, chosen, parse_args, write_result
from throughput import interleaved_medians

BACKENDS = {
    "horovod": ("distributed.backend=horovod", "distributed.zero_stage=0"),
    "zero0": ("distributed.zero_stage=0",),
    "zero1": ("distributed.zero_stage=1",),
    "zero2": ("distributed.zero_stage=2",),
}
BASELINE = "zero0"
SMOKE = {"steps": 3, "warmup_steps": 1, "repeats": 1, "backends": f"horovod,{BASELINE}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, {BASELINE} included")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--out", type=Path, default=RESULTS / "backends.json")
    args = parse_args(parser, SMOKE)
    backends = chosen(BACKENDS, args.backends, BASELINE)
    medians, losses = interleaved_medians(args.recipe, backends, args.steps, args.warmup_steps, args.repeats)
    result = {
        "recipe": str(args.recipe), "steps": args.steps, "warmup_steps": args.warmup_steps, "repeats": args.repeats,
        "smoke": args.smoke,
        "tokens_per_s": medians,
        "ratio_to_zero0": {name: medians[name] / medians[BASELINE] for name in backends},
        "final_loss": losses,
    }
    print(f"{'backend':<10}{'tokens/s':>12}{'vs ZeRO-0':>12}{'final loss':>12}")
    for name in backends:
        print(f"{name:<10}{medians[name]:>12,.0f}{result['ratio_to_zero0'][name]:>12.3f}{losses[name]:>12.4f}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
