"""Real Horovod (Gloo) runs of the tiny recipe, started by the node launcher (as on Slurm): training,
replicas, checkpoints, kill and resume, preemption, and agreement with DeepSpeed ZeRO-0."""

import json
import signal
from pathlib import Path

import psutil
import pytest

from orchestrator.shared.checkpoint import store
from tests.helpers.processes import frozen_at_last_save, kill_run, losses, orch, start_orch
from tests.helpers.project import FAST, LIGHT_GATES
from tests.distributed.test_checkpointing import events, summary, wait_for_step

pytestmark = pytest.mark.distributed

STEPS = 12
HOROVOD = ["distributed.backend=horovod", "distributed.zero_stage=0"]
BASE = [*FAST, *LIGHT_GATES, f"train.steps={STEPS}", "checkpoint.interval_steps=4"]


def complete(run_dir: Path, *overrides: str) -> None:
    result = orch("run", "recipes/tiny-pretrain.yaml", *BASE, *overrides, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted Horovod run, with the replicas compared after every step."""
    run_dir = tmp_path_factory.mktemp("horovod") / "run"
    complete(run_dir, *HOROVOD, "train.replica_check_interval=1")
    return run_dir


def test_horovod_trains_with_identical_replicas_and_verified_checkpoints(reference):
    plan = json.loads((reference / "plan.json").read_text())
    argv = plan["commands"][0]["argv"]
    assert argv[argv.index("-m") + 1] == "launch.node" and argv[argv.index("--backend") + 1] == "horovod"
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    # `param_digest` is present only when every rank's parameters hashed alike after that step.
    assert all(r.get("param_digest") for r in rows)
    assert len({r["param_digest"] for r in rows}) == STEPS  # and they changed every step
    assert len(set(summary(reference)["param_fingerprints"])) == 1
    checkpoints = store.committed(reference / "checkpoints")
    assert store.tag_for(STEPS) in [c.name for c in checkpoints]
    for checkpoint in checkpoints:
        assert store.verify(checkpoint).ok, checkpoint
        assert (checkpoint / "horovod" / "state.pt").exists()


def test_a_horovod_checkpoint_is_gated_on_its_whole_state(reference):
    result = orch("gate", str(reference), "--json")
    report = json.loads(result.stdout)
    health = next(r for r in report["results"] if r["name"] == "health")
    assert health["status"] == "pass" and health["evidence"]["ranks_in_checkpoint"] == 2
    quality = next(r for r in report["results"] if r["name"] == "quality")
    # the consolidated model scores the held-out split about as the run's last evaluation did
    assert quality["value"] == pytest.approx(summary(reference)["final_val_loss"], rel=0.1)


def test_horovod_sigkill_and_resume_is_bit_exact_through_a_rollback_and_an_in_job_restart(tmp_path, reference, monkeypatch):
    """Killed after step 10, then run again: it resumes from the newest committed checkpoint (step 8,
    or 4 where a loaded machine had not committed step 8's asynchronous save yet), rolls a NaN at step
    10 back to a checkpoint, and is restarted in the job (a new rendezvous round) when rank 1 raises at
    step 11."""
    run_dir = tmp_path / "run"
    process = start_orch("run", "recipes/tiny-pretrain.yaml", *BASE, *HOROVOD, "--run-dir", str(run_dir), faults=frozen_at_last_save(STEPS))
    wait_for_step(run_dir, 10)
    kill_run(run_dir)
    process.wait()
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "nan@10,raise@11:rank1")
    complete(run_dir, *HOROVOD)

    assert losses(run_dir) == losses(reference)  # every per-step loss, to the last bit
    assert summary(run_dir)["param_fingerprints"] == summary(reference)["param_fingerprints"]
    history = events(run_dir)
    assert len([e for e in history if e["event"] == "resumed"]) == 2 and {e["step"] for e in history if e["event"] == "resumed"} <= {4, 8}
    assert [e["step"] for e in history if e["event"] == "loss_rolled_back"] == [10]
    # Rank 1 is named though Horovod's peer fails on the closed connection at once and may finish writing
    # its log first: the launcher names the rank whose exception came first (launch/rank_errors.py).
    assert [(e["failure"], e["restarting"], e["ranks"]) for e in history if e["event"] == "attempt_failed"] == [("crash", True, [1])]


def test_horovod_preemption_checkpoints_and_resumes(tmp_path, reference):
    """Ctrl-C / SIGTERM reaches the node launcher, which passes it to the ranks: they save and stop,
    and the CLI reports a resumable stop."""
    run_dir = tmp_path / "run"
    process = start_orch("run", "recipes/tiny-pretrain.yaml", *BASE, *HOROVOD, "--run-dir", str(run_dir))
    wait_for_step(run_dir, 6)
    psutil.Process(process.pid).send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 75, stderr
    (preempted,) = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert store.verify(run_dir / "checkpoints" / store.tag_for(preempted["step"])).ok
    assert "run the same command again to resume" in stderr

    complete(run_dir, *HOROVOD)
    assert losses(run_dir) == losses(reference)


def test_horovod_and_deepspeed_zero0_follow_the_same_loss_curve(tmp_path, reference):
    """Same initial weights (seeded, then broadcast from rank 0), same data order, same optimizer and
    clipping: only the reduction order differs, so the curves agree to rounding."""
    run_dir = tmp_path / "deepspeed"
    complete(run_dir, "distributed.zero_stage=0")
    ours, theirs = losses(reference), losses(run_dir)
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    assert all(abs(a - b) < 2e-3 * abs(b) for (_, a), (_, b) in zip(ours, theirs)), (ours, theirs)


@pytest.mark.parametrize("options", [["distributed.compression=fp16"], ["train.gradient_accumulation_steps=2", "train.global_batch_size=null"]])
def test_horovod_options_train(tmp_path, options):
    """fp16 gradient compression, and backward passes per step (gradient accumulation)."""
    run_dir = tmp_path / "run"
    complete(run_dir, *HOROVOD, "train.steps=6", "train.replica_check_interval=1", *options)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and all(r.get("param_digest") for r in rows)
    config = json.loads((run_dir / "horovod_config.json").read_text())
    if "train.gradient_accumulation_steps=2" in options:
        assert config["backward_passes_per_step"] == 2 and rows[0]["tokens"] == 2 * 2 * 8 * 128


def test_horovod_checkpoint_resumes_at_another_world_size(tmp_path, reference):
    """Saved by 2 ranks, resumed by 1: Horovod's state is whole in every checkpoint, so nothing is
    converted; the data position carries over and the losses follow the uninterrupted run's."""
    run_dir = tmp_path / "run"
    process = start_orch("run", "recipes/tiny-pretrain.yaml", *BASE, *HOROVOD, "--run-dir", str(run_dir), faults=frozen_at_last_save(STEPS))
    wait_for_step(run_dir, 9)
    kill_run(run_dir)
    process.wait()
    result = orch("run", "recipes/tiny-pretrain.yaml", *BASE, *HOROVOD, "distributed.procs_per_node=1", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    (elastic,) = [e for e in events(run_dir) if e["event"] == "elastic_resume"]
    step = store.step_of(elastic["checkpoint"])  # 8, or 4 if the kill came before step 8's commit
    assert f"resuming {elastic['checkpoint']} (saved at world size 2) at world size 1" in result.stdout
    assert elastic["consumed_samples"] == step * 16
    ours, theirs = losses(run_dir), losses(reference)
    assert ours[:step] == theirs[:step] and [s for s, _ in ours] == list(range(1, STEPS + 1))
    assert all(abs(a - b) < 1e-3 for (_, a), (_, b) in zip(ours[step:], theirs[step:])), (ours[step:], theirs[step:])
