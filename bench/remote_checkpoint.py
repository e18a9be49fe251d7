"""What does the remote checkpoint tier cost? Blocking per save, upload throughput, resume on an empty machine.

Against moto's S3 server on loopback, started here (or `--endpoint-url` of a real store, with a bucket
that exists and credentials in the environment), on `recipes/tiny-pretrain.yaml` through `orch run`:

- stall: runs with a checkpoint every --interval steps, alternating local only and with
  `checkpoint.remote` (--repeats each): the stall per save from the `checkpoint` events, the median
  step time, and so the extra blocking per save as a share of step time at a save every 100 steps
  (goal: within 1%);
- throughput: the last remote run's final checkpoint sent again by the uploader's own path
  (`RemoteTier.upload`: each file hashed then put, listed back, marker) against a raw s3fs `put_file` of the
  same files to another prefix of the same store (goal: >= 0.8);
- resume: `orch run --resume URL` on an empty run directory: process start -> checkpoint fetched and
  verified -> `resumed` event -> first new metrics row.

Nothing is asserted on the numbers. On loopback moto is Python on the same cores as training, so its
throughput is not a store's; the ratio and the stall are the figures that carry over.

    python bench/remote_checkpoint.py [--steps 40] [--interval 10] [--repeats 2] [--out bench/results/remote_checkpoint.json]
    python bench/remote_checkpoint.py --smoke --out /tmp/remote_checkpoint.json     # every part, a few steps
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

from common import (DEFAULT_RECIPE, FAST, REPO, events, first_event, machine, orch_argv, parse_args, repo_relative, results_dir,
                    row_after, run_logged, wait_for, write_result)

from orchestrator.rundir.layout import RunDir
from orchestrator.shared.checkpoint import store
from orchestrator.shared.checkpoint.remote import RemoteTier
from tests.helpers.object_store import ObjectStore, object_store

MODES = ("local", "remote")
SMOKE = {"steps": 4, "interval": 2, "repeats": 1, "warmup_steps": 1}


def main() -> None:
    args = _parse_args()
    with (nullcontext(ObjectStore(args.endpoint_url)) if args.endpoint_url else object_store()) as s3:
        bucket = args.bucket or s3.bucket(f"orch-bench-{int(time.time())}")
        with tempfile.TemporaryDirectory(prefix="orch-remote-bench-", dir=args.scratch) as scratch:
            runs = _alternate(args, Path(scratch), s3, bucket)
            print("upload throughput ...", flush=True)
            throughput = measure_throughput(Path(runs["remote"][-1]["final"]), s3, bucket)
            print("resume on an empty run directory ...", flush=True)
            resume = measure_resume(args, Path(scratch), s3, runs["remote"][-1]["url"])
    result = summarise(args, runs, throughput, resume)
    print(render(result))
    write_result(args.out, result)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per training run")
    parser.add_argument("--interval", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, alternating local, remote")
    parser.add_argument("--warmup-steps", type=int, default=3, help="first steps of each run left out of step-time figures")
    parser.add_argument("--endpoint-url", default=None, help="a real S3-compatible store instead of moto on loopback")
    parser.add_argument("--bucket", default=None, help="with --endpoint-url: an existing bucket (s3://NAME); default a new one on moto")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--scratch", type=Path, default=None, help="where run directories go; default the system temp dir")
    parser.add_argument("--out", type=Path, default=results_dir(False) / "remote_checkpoint.json")
    args = parse_args(parser, SMOKE)
    if args.steps <= args.warmup_steps or not 1 <= args.interval < args.steps:
        parser.error("--steps must exceed --warmup-steps and --interval, and --interval be at least 1")
    if args.endpoint_url and not args.bucket:
        parser.error("--endpoint-url needs --bucket (an existing one)")
    return args


def overrides_for(mode: str, args: argparse.Namespace, s3: ObjectStore, url: str) -> list[str]:
    remote = [f"checkpoint.remote.url={url}", f"checkpoint.remote.options.endpoint_url={s3.endpoint_url}"] if mode == "remote" else []
    return [*FAST, f"train.steps={args.steps}", f"train.eval_interval={args.steps + 1}", f"checkpoint.interval_steps={args.interval}", *remote]


def _alternate(args: argparse.Namespace, scratch: Path, s3: ObjectStore, bucket: str) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        for mode in MODES:
            run_dir, url = scratch / f"{mode}-{repeat}", f"{bucket}/{mode}-{repeat}"
            run_logged([*orch_argv("run", run_dir, str(args.recipe), *overrides_for(mode, args, s3, url))], scratch / f"{mode}-{repeat}.log",
                       logs=run_dir / "logs")
            rows = RunDir(run_dir).metric_rows()[args.warmup_steps:]
            run = {"url": url, "final": str(run_dir / "checkpoints" / store.tag_for(args.steps)),
                   "stall_s": [e.stall_s for e in events(run_dir, "checkpoint")], "step_s": [r["step_s"] for r in rows],
                   "tokens_per_s": [r["tokens_per_s"] for r in rows],
                   "uploads": [{"step": e.step, "bytes": e.bytes, "upload_s": e.upload_s, "tries": e.tries}
                               for e in events(run_dir, "checkpoint_uploaded")],
                   "upload_failures": [e.reason for e in events(run_dir, "checkpoint_upload_failed")]}
            runs[mode].append(run)
            print(f"repeat {repeat + 1}/{args.repeats} {mode:6}: {statistics.median(run['tokens_per_s']):,.0f} tokens/s, "
                  f"stall {statistics.median(run['stall_s']) * 1e3:.1f} ms per save, {len(run['uploads'])} uploads", flush=True)
    return runs


def measure_throughput(checkpoint: Path, s3: ObjectStore, bucket: str, tries: int = 3) -> dict:
    """The uploader's path against a raw s3fs put of the same files to the same store, each to a new prefix
    every try, in alternating order; the best of `tries` each."""
    names = [p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()]
    size = sum(entry.bytes for entry in store.read_manifest(checkpoint).files.values())

    def uploader(attempt: int) -> None:
        RemoteTier(f"{bucket}/throughput-uploader-{attempt}", s3.options()).upload(checkpoint)

    def raw_put(attempt: int) -> None:
        raw = RemoteTier(f"{bucket}/throughput-raw-{attempt}", s3.options())
        for name in names:
            raw.fs.put_file(str(checkpoint / name), f"{raw.root}/{checkpoint.name}/{name}")

    seconds: dict[str, list[float]] = {"uploader_s": [], "raw_put_s": []}
    for attempt in range(tries):
        pair = [("uploader_s", uploader), ("raw_put_s", raw_put)]
        for key, upload in pair if attempt % 2 == 0 else reversed(pair):
            tic = time.perf_counter()
            upload(attempt)
            seconds[key].append(time.perf_counter() - tic)
    best = {key: min(values) for key, values in seconds.items()}
    return {"bytes": size, "files": len(names), **seconds, "uploader_mb_per_s": size / best["uploader_s"] / 1e6,
            "raw_put_mb_per_s": size / best["raw_put_s"] / 1e6, "ratio": best["raw_put_s"] / best["uploader_s"]}


def measure_resume(args: argparse.Namespace, scratch: Path, s3: ObjectStore, url: str) -> dict:
    """`orch run --resume URL` on an empty run directory, with more steps to train than the store's checkpoint holds."""
    run_dir, log = scratch / "resumed", scratch / "resumed.log"
    steps = args.steps + args.interval
    argv = orch_argv("run", run_dir, str(args.recipe), *overrides_for("remote", args, s3, url), f"train.steps={steps}", "--resume", url)
    started = time.time()
    with log.open("w") as out:
        process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        ended = lambda: f"orch run exited {process.poll()}" if process.poll() is not None else None  # noqa: E731
        fetched = wait_for(lambda: (run_dir / "checkpoints" / store.tag_for(args.steps)).is_dir() and time.time(), ended, log,
                           "fetched checkpoint", logs=run_dir / "logs")
        resumed = wait_for(lambda: first_event(run_dir, "resumed"), ended, log, "resumed event", logs=run_dir / "logs")
        first_row = wait_for(lambda: row_after(run_dir, args.steps), ended, log, "first resumed step", logs=run_dir / "logs")
        code = process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    if code != 0:
        raise RuntimeError(f"the resumed run exited {code}; see {log}")
    return {"checkpoint_fetched_s": fetched - started, "resumed_event_s": resumed.time - started, "first_step_s": first_row - started}


def summarise(args: argparse.Namespace, runs: dict, throughput: dict, resume: dict) -> dict:
    stall = {mode: statistics.median(s for run in runs[mode] for s in run["stall_s"]) for mode in MODES}
    step_s = statistics.median(s for mode in MODES for run in runs[mode] for s in run["step_s"])
    extra = stall["remote"] - stall["local"]
    return {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "machine": machine("torch", "deepspeed", "s3fs", "moto", store="moto on loopback" if not args.endpoint_url else args.endpoint_url),
        "config": {"recipe": repo_relative(args.recipe), "overrides": FAST, "steps": args.steps, "interval": args.interval,
                   "repeats": args.repeats, "smoke": args.smoke},
        "stall_per_save_s": stall, "median_step_s": step_s, "extra_stall_per_save_s": extra,
        "overhead_at_save_every_100_steps": extra / (100 * step_s), "goal_overhead": 0.01,
        "throughput": throughput, "goal_ratio": 0.8, "resume_from_empty_machine": resume, "runs": runs,
    }


def render(result: dict) -> str:
    t, r = result["throughput"], result["resume_from_empty_machine"]
    lines = [
        f"stall per save: local {result['stall_per_save_s']['local'] * 1e3:.1f} ms, with remote {result['stall_per_save_s']['remote'] * 1e3:.1f} ms "
        f"(median step {result['median_step_s'] * 1e3:.0f} ms): {result['overhead_at_save_every_100_steps']:+.3%} of step time "
        f"at a save every 100 steps (goal within {result['goal_overhead']:.0%})",
        f"upload: {t['bytes'] / 1e6:.1f} MB, uploader {t['uploader_mb_per_s']:.0f} MB/s, raw s3fs put {t['raw_put_mb_per_s']:.0f} MB/s: "
        f"ratio {t['ratio']:.2f} (goal >= {result['goal_ratio']})",
        f"resume on an empty run directory: checkpoint fetched and verified {r['checkpoint_fetched_s']:.1f} s, resumed "
        f"{r['resumed_event_s']:.1f} s, first new step {r['first_step_s']:.1f} s after `orch run` started",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
