"""How long from `orch submit` to training, and what does a Slurm preemption and requeue cost?

On the local 2-node Slurm cluster (`slurm/dev-cluster.sh up`, started here first), with the job
`tests/integration/test_slurm_submit.py` submits (`TWO_NODES`: tiny-pretrain, 2 nodes x 1 rank, ZeRO-2):

1. submit -> first step, --repeats times: the wall clock just before `python -m orchestrator submit`
   is started, to the first row of `metrics.jsonl` appearing (polled). Broken down by the run's
   events: the submit command itself, queue wait (`slurm_submitted` -> `slurm_start`), start-up
   (`slurm_start` -> `start`, the training loop) and the first step (`start` -> first row).
2. requeue, --requeue-repeats times: a job with `slurm.signal=USR1` is sent
   `scancel --signal=USR1 --batch` once a row with step >= --signal-at-step appears. From that call
   to the first row past the preempted step after the `resumed` event, broken down: signal ->
   `preempted` (step boundary, agreement, checkpoint), -> `slurm_requeued`, -> the second
   `slurm_start` (Slurm's requeue delay), -> `resumed`, -> the first new row.

Every job gets a fresh run directory and runs alone, to COMPLETED (`scontrol show job -o`), before
the next is submitted. Nothing is asserted on the numbers.

Run it from the repository root, as root like dev-cluster.sh (about 2 minutes on a 2-core machine):

    python bench/slurm.py [--repeats 2] [--requeue-repeats 1] [--out bench/results/slurm.json]
    python bench/slurm.py --smoke --out /tmp/slurm.json     # one job of each, 6 steps (the test suite's)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import POLL_S, REPO, RESULTS, events, first_event, machine, orch_argv, parse_args, row_after, wait_for, write_result

from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_jobs

# The job tests/integration/test_slurm_submit.py submits (TWO_NODES, with tests/helpers/project.py's FAST); train.steps from --steps.
TWO_NODES = [
    "recipes/tiny-pretrain.yaml", "data.max_bytes=1500000", "train.schedule.warmup_steps=2", "train.eval_interval=1000",
    "distributed.nodes=2", "distributed.procs_per_node=1", "distributed.zero_stage=2", "checkpoint.interval_steps=4",
    "slurm.partition=debug", "slurm.time_limit=00:15:00", "slurm.cpus_per_task=1",
]
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
STATE_POLL_S = 1.0  # scontrol, a subprocess: less often
TIMEOUT_S = 300
SMOKE = {"steps": 6, "repeats": 1, "requeue_repeats": 1, "signal_at_step": 2}

SUBMIT_PHASES = {  # key: (label, from, to)
    "submit_command_s": ("submit command (start -> exit)", "t0", "submit_exit"),
    "submit_s": ("  of which start -> slurm_submitted", "t0", "slurm_submitted"),
    "queue_wait_s": ("queue wait (slurm_submitted -> slurm_start)", "slurm_submitted", "slurm_start"),
    "start_up_s": ("start-up (slurm_start -> start)", "slurm_start", "start"),
    "first_step_s": ("first step (start -> first row)", "start", "first_row"),
    "total_s": ("total (orch submit -> first row)", "t0", "first_row"),
}
REQUEUE_PHASES = {
    "signal_to_preempted_s": ("signal -> preempted", "signal", "preempted"),
    "signal_to_batch_s": ("  of which scancel -> batch step has it", "signal", "slurm_signal"),
    "batch_to_preempted_s": ("  of which -> step boundary, checkpoint, stop", "slurm_signal", "preempted"),
    "preempted_to_requeued_s": ("preempted -> slurm_requeued", "preempted", "slurm_requeued"),
    "requeue_delay_s": ("slurm_requeued -> slurm_start (requeue delay)", "slurm_requeued", "slurm_start_2"),
    "start_to_resumed_s": ("slurm_start -> resumed", "slurm_start_2", "resumed"),
    "resumed_to_first_step_s": ("resumed -> first new row", "resumed", "first_new_row"),
    "total_s": ("total (signal -> first new row)", "signal", "first_new_row"),
}


def main() -> None:
    args = _parse_args()
    cluster_up()
    with tempfile.TemporaryDirectory(prefix="orch-slurm-bench-") as scratch:
        firsts = []
        for repeat in range(args.repeats):
            firsts.append(measure_first_step(args, Path(scratch) / f"first-{repeat}"))
            print(f"submit {repeat + 1}/{args.repeats}: first row {firsts[-1]['total_s']:.1f} s after orch submit", flush=True)
        requeues = []
        for repeat in range(args.requeue_repeats):
            requeues.append(measure_requeue(args, Path(scratch) / f"requeue-{repeat}"))
            print(f"requeue {repeat + 1}/{args.requeue_repeats}: first new row {requeues[-1]['total_s']:.1f} s "
                  "after the signal", flush=True)
    result = summarise(args, firsts, requeues)
    print(render_table(result))
    write_result(args.out, result)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="train.steps of every job (as the integration test)")
    parser.add_argument("--repeats", type=int, default=2, help="jobs timed from orch submit to the first step")
    parser.add_argument("--requeue-repeats", type=int, default=1, help="jobs preempted with USR1 and requeued")
    parser.add_argument("--signal-at-step", type=int, default=4, help="send USR1 once a metrics row with this step appears")
    parser.add_argument("--out", type=Path, default=RESULTS / "slurm.json")
    args = parse_args(parser, SMOKE)
    if args.repeats < 1 or args.requeue_repeats < 0:
        parser.error("--repeats must be at least 1 and --requeue-repeats at least 0")
    # The signal lands a step or two later; the job must still be training then.
    if not 1 <= args.signal_at_step <= args.steps - 4:
        parser.error(f"--signal-at-step ({args.signal_at_step}) must be between 1 and --steps - 4 ({args.steps - 4})")
    return args


def cluster_up() -> None:
    up = subprocess.run(["bash", str(REPO / "slurm" / "dev-cluster.sh"), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        raise RuntimeError(f"slurm/dev-cluster.sh up failed (exit {up.returncode}):\n{up.stdout}{up.stderr}")
    print(up.stdout.strip(), flush=True)


# -- one job ---------------------------------------------------------------------------------------


def submit(run_dir: Path, steps: int, *extra: str) -> tuple[str, float, float]:
    """`orch submit` as a user runs it: the job id, the wall clock just before it started and when it exited."""
    argv = orch_argv("submit", run_dir, *TWO_NODES, f"train.steps={steps}", *extra)
    wait_until_idle()
    t0 = time.time()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT_S)
    exited = time.time()
    if result.returncode != 0:
        raise RuntimeError(f"orch submit failed with exit code {result.returncode}:\n{result.stdout}{result.stderr}")
    return last_job(run_dir), t0, exited


def last_job(run_dir: Path) -> str:
    """The job `orch submit` submitted last (its training job: a preparation job comes before it)."""
    return read_jobs(RunDir(run_dir)).job_ids[-1]


def wait_until_idle(timeout_s: float = TIMEOUT_S) -> None:
    """No job pending or running (someone else's included), so queue wait is Slurm's own and not a queue."""
    deadline = time.monotonic() + timeout_s
    while busy := subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster is still busy after {timeout_s:.0f}s:\n{busy}")
        time.sleep(STATE_POLL_S)


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)["JobState"]


def wait_for_job(found, job_id: str, run_dir: Path, what: str):
    """common.wait_for, asking scontrol every STATE_POLL_S whether the job ended or failed first."""
    def ended() -> str | None:
        state = job_state(job_id)
        return f"job {job_id} is {state}" if state in FAILED or state == "COMPLETED" else None

    return wait_for(found, ended, run_dir / "logs" / f"slurm-{job_id}.out", what, TIMEOUT_S, check_every_s=STATE_POLL_S,
                    logs=run_dir / "logs")


def wait_until_completed(job_id: str, run_dir: Path) -> None:
    wait_for_job(lambda: job_state(job_id) == "COMPLETED", job_id, run_dir, "COMPLETED state")


# -- the two measurements --------------------------------------------------------------------------


def measure_first_step(args: argparse.Namespace, run_dir: Path) -> dict:
    job_id, t0, exited = submit(run_dir, args.steps)
    first_row = wait_for_job(lambda: row_after(run_dir, 0), job_id, run_dir, "metrics row")
    wait_until_completed(job_id, run_dir)
    times = {"t0": t0, "submit_exit": exited, "first_row": first_row}
    names = ("slurm_submitted", "slurm_start", "start", "completed", "slurm_end")
    times |= {name: events(run_dir, name)[0].time for name in names}
    # For the requeue's preempted -> slurm_requeued: the same rank and srun teardown after a normal end.
    return {"job_id": job_id, **_phases(SUBMIT_PHASES, times), "completed_to_slurm_end_s": times["slurm_end"] - times["completed"],
            "times": times}


def measure_requeue(args: argparse.Namespace, run_dir: Path) -> dict:
    job_id, _, _ = submit(run_dir, args.steps, "slurm.signal=USR1")
    wait_for_job(lambda: row_after(run_dir, args.signal_at_step - 1), job_id, run_dir, f"row for step {args.signal_at_step}")
    signalled_at_step = max(r["step"] for r in RunDir(run_dir).metric_rows())
    signal_t = time.time()
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=60)
    scancel_s = time.time() - signal_t
    preempted = wait_for_job(lambda: first_event(run_dir, "preempted"), job_id, run_dir, "preempted event")
    resumed = wait_for_job(lambda: first_event(run_dir, "resumed"), job_id, run_dir, "resumed event")
    first_new_row = wait_for_job(lambda: row_after(run_dir, preempted.step), job_id, run_dir, "row after the resume")
    wait_until_completed(job_id, run_dir)
    starts = events(run_dir, "slurm_start")
    assert [s.restart for s in starts] == [0, 1], f"expected one requeue, got slurm_start events {starts}"
    saves = [e for e in events(run_dir, "checkpoint") if e.step == preempted.step and e.time <= preempted.time]
    times = {
        "signal": signal_t, "slurm_signal": events(run_dir, "slurm_signal")[0].time, "preempted": preempted.time,
        "slurm_requeued": events(run_dir, "slurm_requeued")[0].time, "slurm_start_2": starts[1].time,
        "resumed": resumed.time, "start_2": events(run_dir, "start")[1].time, "first_new_row": first_new_row,
    }
    return {
        "job_id": job_id,
        "signalled_at_step": signalled_at_step,
        "preempted_step": preempted.step,
        "resumed_step": resumed.step,
        "resumed_from": resumed.checkpoint,
        "recomputed_steps": resumed.recomputed_steps,
        "scancel_command_s": scancel_s,
        "preempt_save_s": saves[-1].stall_s + saves[-1].write_s if saves else None,
        "resumed_to_start_s": times["start_2"] - times["resumed"],
        **_phases(REQUEUE_PHASES, times),
        "times": times,
    }


def _phases(phases: dict, times: dict) -> dict:
    return {key: times[end] - times[begin] for key, (_, begin, end) in phases.items()}


# -- summary ---------------------------------------------------------------------------------------


def summarise(args: argparse.Namespace, firsts: list[dict], requeues: list[dict]) -> dict:
    def medians(runs: list[dict], phases: dict) -> dict:
        return {key: statistics.median(run[key] for run in runs) for key in phases} if runs else {}

    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "machine": machine("torch", "deepspeed", slurm=slurm),
        "config": {
            "overrides": [*TWO_NODES, f"train.steps={args.steps}"],
            "requeue_overrides": ["slurm.signal=USR1"],
            "repeats": args.repeats,
            "requeue_repeats": args.requeue_repeats,
            "smoke": args.smoke,
            "signal_at_step": args.signal_at_step,
            "poll_s": POLL_S,
        },
        "submit_to_first_step": {"median": medians(firsts, SUBMIT_PHASES), "runs": firsts},
        "requeue": {"median": medians(requeues, REQUEUE_PHASES), "runs": requeues},
        "notes": NOTES,
    }


NOTES = [
    "times of rows appearing in metrics.jsonl are polled every poll_s; event times are the run's own time.time()",
    "submit_command_s ends when the process exits, after its slurm_submitted event; submit_s (to that event), queue wait, "
    "start-up and first step add up to total_s",
    "completed_to_slurm_end_s: rank exit, node launchers and srun returning after a normal end, to compare with "
    "preempted -> slurm_requeued (the same teardown, then `scontrol requeue`)",
    "start-up (slurm_start -> start) covers srun, the node launchers, interpreter and library imports, rendezvous, "
    "DeepSpeed init, the CPU matmul probe for MFU and the checkpoint scan",
    "signal is the wall clock just before `scancel --signal=USR1 --batch`; the ranks stop at the next step boundary",
    "requeue delay: the dev cluster sets AuthInfo=cred_expire=10 (Slurm's default is 120 s) and schedules every 5 s",
]


def render_table(result: dict) -> str:
    config = result["config"]
    lines = [f"{result['machine']['slurm']}, 2 nodes x 1 rank, train.steps={config['overrides'][-1].split('=')[1]}", ""]
    for title, key, phases in (("orch submit -> first step", "submit_to_first_step", SUBMIT_PHASES),
                               ("USR1 -> requeue -> first new step", "requeue", REQUEUE_PHASES)):
        runs = result[key]["runs"]
        if not runs:
            continue
        lines.append(f"{title + ' (s)':48}" + "".join(f"{'run ' + str(i + 1):>8}" for i in range(len(runs))) + f"{'median':>8}")
        for phase, (label, _, _) in phases.items():
            lines.append(f"{label:48}" + "".join(f"{run[phase]:>8.2f}" for run in runs) + f"{result[key]['median'][phase]:>8.2f}")
        lines.append("")
    firsts = result["submit_to_first_step"]["runs"]
    lines.append("completed -> slurm_end (teardown after a normal end): "
                 + ", ".join(f"{run['completed_to_slurm_end_s']:.2f}" for run in firsts) + " s")
    for run in result["requeue"]["runs"]:
        save = f"{run['preempt_save_s']:.2f} s" if run["preempt_save_s"] is not None else "-"
        lines.append(f"job {run['job_id']}: signalled at step {run['signalled_at_step']}, preempted at step "
                     f"{run['preempted_step']} (save {save}), resumed from {run['resumed_from']} "
                     f"({run['recomputed_steps']} steps recomputed)")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    main()
