"""Fault tolerance with real processes and real kills: bit-exact resume, crashes during saves,
corruption, preemption signals."""

import json
import random
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.errors import ResumeError
from orchestrator.starting.local import LocalRunRequest, plan_local_run
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.memory_phases import PHASES
from orchestrator.watching.show import describe_run
from tests.helpers.processes import frozen_at_last_save, kill_run, losses, orch, start_orch
from tests.helpers.project import SHORT_RUN, TINY
from tests.helpers.mfu import assert_mfu_matches_plan

pytestmark = pytest.mark.distributed

BASE = SHORT_RUN
STEPS = 12  # SHORT_RUN's


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def events(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).history()


def complete(run_dir: Path, *overrides: str) -> str:
    """The run trained to its end by `orch run`; returns what the command printed."""
    result = orch("run", "recipes/tiny-pretrain.yaml", *BASE, *overrides, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def wait_for_step(run_dir: Path, step: int, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= step):
        assert time.monotonic() < deadline, f"no step {step} within {timeout_s}s"
        time.sleep(0.05)


@pytest.mark.parametrize("stage", [2, 3])
def test_sigkill_and_auto_resume_is_bit_exact(tmp_path, uninterrupted, stage):
    """Killed at step 10 in the middle of appending to events.jsonl and metrics.jsonl (the half lines
    such a kill leaves are written after it): the resumed run skips them and ends bit-exact."""
    run_dir = tmp_path / "run"
    process = start_orch("run", "recipes/tiny-pretrain.yaml", *BASE, f"distributed.zero_stage={stage}", "--run-dir", str(run_dir),
                         faults=frozen_at_last_save(STEPS))
    wait_for_step(run_dir, 10)
    kill_run(run_dir)
    process.wait()
    with (run_dir / "events.jsonl").open("a") as log:
        log.write('{"event": "checkpoint", "time": 1.0, "st')
    with (run_dir / "metrics.jsonl").open("a") as log:
        log.write('{"step": 11, "lo')
    output = complete(run_dir, f"distributed.zero_stage={stage}")

    assert losses(run_dir) == losses(uninterrupted(stage))  # every per-step loss, to the last bit
    assert summary(run_dir)["param_fingerprints"] == summary(uninterrupted(stage))["param_fingerprints"]
    resumed = [e for e in events(run_dir) if e["event"] == "resumed"]
    assert resumed and resumed[0]["step"] == 8 and resumed[0]["recomputed_steps"] >= 2
    assert summary(run_dir)["restarts"] == 1 and 0 < summary(run_dir)["goodput"] < 1
    # This attempt's time apart from the time since the first attempt's launch, which counts its set-up
    # and the gap between attempts (the goodput ledger's wall).
    first = next(e["time"] for e in events(run_dir) if e["event"] == "attempt_started")
    last = [e["time"] for e in events(run_dir) if e["event"] == "start"][-1]
    total_s, attempt_s = summary(run_dir)["wall_s"], summary(run_dir)["attempt_wall_s"]
    assert attempt_s > 0 and total_s - attempt_s == pytest.approx(last - first, abs=1e-3)
    assert f"{attempt_s:.0f}s this attempt ({total_s:.0f}s since the first of 2 attempts)" in output
    assert "s this attempt (" in describe_run(run_dir)
    assert_every_phase_recorded(run_dir)


def assert_every_phase_recorded(run_dir: Path) -> None:
    """Issue 32: each rank's peak memory in every phase, the killed attempt's as of its checkpoints, the
    resumed one's (construction to the closing fingerprint, the resume and an evaluation included) at
    the end, and `orch status` shows it."""
    memory = [e for e in events(run_dir) if e["event"] == "memory_phases"]
    assert [e["step"] for e in memory][:2] == [4, 8] and memory[-1]["step"] == STEPS
    assert "resume" not in memory[1]["host_peak_bytes"]  # the first attempt's, kept after the kill
    last = memory[-1]["host_peak_bytes"]
    assert list(last) == list(PHASES) and all(len(peaks) == 2 and all(p > 0 for p in peaks) for peaks in last.values()), last
    assert list(memory[-1]["host_grown_bytes"]) == list(PHASES)
    status = orch("status", str(run_dir)).stdout
    assert "peak memory per phase" in status and "fwd/bwd" in status and "rank 1" in status, status


def test_random_kills_during_steps_and_saves_never_corrupt(tmp_path, uninterrupted):
    """Kill everything at random moments while a checkpoint is taken every step (staging, copying,
    hashing, manifest, rename and pointer updates are all in flight); every restart must pick a
    verified checkpoint, and the finished run must equal the uninterrupted one."""
    run_dir = tmp_path / "run"
    overrides = ["checkpoint.interval_steps=1", "distributed.zero_stage=2"]
    rng = random.Random(0)
    kills = 0
    while kills < 4:
        starts = _starts(run_dir)
        process = start_orch("run", "recipes/tiny-pretrain.yaml", *BASE, *overrides, "--run-dir", str(run_dir))
        started = time.monotonic()
        while _starts(run_dir) == starts:  # this attempt's ranks are training, not an earlier attempt's
            if process.poll() is not None or time.monotonic() - started > 240:
                break
            time.sleep(0.05)
        # Within about five steps of the start on a fast machine: later kills would find the run finished.
        time.sleep(rng.uniform(0.0, 0.8))
        if process.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        kill_run(run_dir)
        process.wait()
        kills += 1
    complete(run_dir, *overrides)
    assert losses(run_dir) == losses(uninterrupted())
    assert summary(run_dir)["param_fingerprints"] == summary(uninterrupted())["param_fingerprints"]
    for event in events(run_dir):
        if event["event"] == "checkpoint_set_aside":
            assert "partial save" in event["reason"], event  # only uncommitted saves are ever set aside
    assert kills >= 3, "the run finished before enough kills landed"


def _starts(run_dir: Path) -> int:
    return sum(e["event"] == "start" for e in events(run_dir))


def test_corrupted_newest_checkpoint_falls_back(tmp_path, uninterrupted):
    """One flipped bit in a shard of the newest checkpoint (store.verify's unit tests cover truncated,
    deleted and re-manifested files: the fall-back path after a failed verify is the same)."""
    run_dir = tmp_path / "run"
    complete(run_dir, "distributed.zero_stage=2", "checkpoint.async_save=false")
    newest = run_dir / "checkpoints" / "step-00000012"
    shard = next(newest.glob("zero_pp_rank_1_*optim_states.pt"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    result = orch("run", "recipes/tiny-pretrain.yaml", *BASE, "distributed.zero_stage=2", "checkpoint.async_save=false", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    # Decided before it is said: the summary of the run is there, but its newest checkpoint does not verify.
    assert "resuming after step 8; newer step-00000012 does not verify (zero_pp_rank_1_" in result.stdout
    assert "after step 12" not in result.stdout and "complete" not in result.stdout
    assert "set aside" in result.stderr and "resumed from step-00000008" in result.stderr
    aside = list((run_dir / "checkpoints" / "set-aside").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("step-00000012")
    assert losses(run_dir) == losses(uninterrupted())


def test_preemption_signal_checkpoints_and_requeues(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start_orch("run", "recipes/tiny-pretrain.yaml", *BASE, "distributed.zero_stage=2", "--run-dir", str(run_dir))
    wait_for_step(run_dir, 6)
    launcher = next(p for p in psutil.process_iter(["cmdline"]) if "launch.node" in " ".join(p.info["cmdline"] or []) and str(run_dir) in " ".join(p.info["cmdline"]))
    launcher.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 75, stderr
    preempted = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(preempted) == 1 and preempted[0]["signal"] == signal.SIGUSR1
    step = preempted[0]["step"]
    assert (run_dir / "checkpoints" / f"step-{step:08d}" / "manifest.json").exists()
    assert "run the same command again to resume" in stderr

    complete(run_dir, "distributed.zero_stage=2")
    assert losses(run_dir) == losses(uninterrupted())


def test_a_complete_run_is_not_launched_again(tmp_path, uninterrupted):
    """The same command again on the finished run: said so, exit 0, and no rank started (no start
    event, rank log, energy record or rewritten plan). Raising train.steps resumes it instead;
    lowering it below the checkpoint's step is refused, as nothing would train."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted(), run_dir)
    before = _files(run_dir)
    args = ["recipes/tiny-pretrain.yaml", *BASE, "distributed.zero_stage=2", "--run-dir", str(run_dir)]
    result = orch("run", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"complete, {STEPS} of {STEPS} steps trained" in result.stdout and "nothing to launch" in result.stdout
    assert result.stderr == ""
    assert _files(run_dir) == before

    said = []
    more = LocalRunRequest(recipe=TINY, overrides=[*BASE, "distributed.zero_stage=2", f"train.steps={STEPS + 4}"], run_dir=run_dir,
                           stop_if_complete=True)
    _, plan, attempt = plan_local_run(more, said.append)
    attempt.close()
    assert plan.recipe.train.steps == STEPS + 4 and said[-1].startswith(f"resuming after step {STEPS}; with changes: train.steps")
    with pytest.raises(ResumeError, match=f"step-{STEPS:08d} .* is past train.steps={STEPS - 4}"):
        fewer = LocalRunRequest(recipe=TINY, overrides=[*BASE, "distributed.zero_stage=2", f"train.steps={STEPS - 4}"], run_dir=run_dir,
                                stop_if_complete=True)
        plan_local_run(fewer, said.append)
    assert _files(run_dir) == before


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run but the attempt lock (its holder record names whoever held it last)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "attempt.lock"}


def test_unsafe_recipe_change_is_refused_before_launch(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted(), run_dir)
    result = orch("run", "recipes/tiny-pretrain.yaml", *BASE, "distributed.zero_stage=2", "model.hidden_size=64", "--run-dir", str(run_dir))
    assert result.returncode == 1
    assert "cannot resume step 12" in result.stderr and "model.hidden_size: 128 -> 64" in result.stderr and "--fresh" in result.stderr
    assert losses(run_dir) == losses(uninterrupted())  # nothing trained


def test_elastic_resume_at_another_world_size(tmp_path, uninterrupted):
    """Saved by 2 ranks, resumed by 1 through DeepSpeed's universal checkpoint: the data position
    carries over (the same samples per step, none repeated or skipped) and training continues from
    the same weights, so the losses follow the uninterrupted run's (to reduction-order rounding)."""
    run_dir = tmp_path / "run"
    process = start_orch("run", "recipes/tiny-pretrain.yaml", *BASE, "distributed.zero_stage=2", "--run-dir", str(run_dir),
                         faults=frozen_at_last_save(STEPS))
    wait_for_step(run_dir, 9)
    kill_run(run_dir)
    process.wait()
    result = orch("run", "recipes/tiny-pretrain.yaml", *BASE, "distributed.zero_stage=2", "distributed.procs_per_node=1", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "converted step-00000008 (world size 2) to a universal checkpoint" in result.stdout

    (elastic,) = [e for e in events(run_dir) if e["event"] == "elastic_resume"]
    assert (elastic["from_world_size"], elastic["to_world_size"]) == (2, 1)
    assert elastic["consumed_samples"] == 8 * 16  # exactly the samples of steps 1-8, at any world size
    ours, theirs = losses(run_dir), losses(uninterrupted())
    assert ours[:8] == theirs[:8]
    assert [s for s, _ in ours] == list(range(1, STEPS + 1))
    assert all(abs(a - b) < 1e-3 for (_, a), (_, b) in zip(ours[8:], theirs[8:])), (ours[8:], theirs[8:])
    assert_mfu_matches_plan(run_dir)  # rows of both world sizes, the second with accumulation 2
