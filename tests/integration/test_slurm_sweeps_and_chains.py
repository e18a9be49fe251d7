"""Sweeps and pipelines on the real local Slurm cluster (started by `cluster`, as for test_slurm_submit):
one array job of trials, two at a time, cancelled mid-way and run again; a diverging learning rate
pruned; `best.yaml` trained again to the same result; `orch submit --then gate,release` as three
dependent jobs, and a failed gate that ends the chain before the release."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.slurm.script import array_ranges
from tests.helpers.processes import orch
from tests.helpers.project import FAST, LIGHT_GATES
from tests.integration.test_slurm_submit import cluster, job_fields  # noqa: F401  (cluster: the module-scoped fixture that starts it)

pytestmark = pytest.mark.integration

ON_SLURM = ["distributed.nodes=1", "distributed.procs_per_node=1", "slurm.partition=debug", "slurm.time_limit=00:15:00",
            "slurm.cpus_per_task=1"]
LEARNING_RATES = [0.002, 0.004, 30.0, 0.001]
DIVERGING = LEARNING_RATES.index(30.0)
SWEEP = ["recipes/tiny-sweep.yaml", *FAST, *ON_SLURM, "train.steps=12", "train.eval_interval=4", "train.eval_batches=1",
         "train.schedule.warmup_steps=2", "train.grad_clip=null", "checkpoint.interval_steps=4",
         f"sweep.parameters={{train.optimizer.lr: {{choices: {LEARNING_RATES}}}}}", "sweep.sampler=grid", "sweep.trials=4",
         "sweep.parallel=2", "sweep.pruner.kind=none", "sweep.pruner.diverged_above=20",
         *LIGHT_GATES, "gates.evaluation.tasks=[{name: python_idioms, metric: acc}]"]  # gated as a 12-step model can be
"""Four learning rates in grid order, one of them far too large. The divergence bound (the untrained
loss is ln 2048 = 7.6) prunes it whatever ran before it; a median rule would also prune the slowest
good rate, depending on which trial finished first (tests/distributed/test_sweep_local.py and the
unit tests judge by the median)."""
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def states(job_id: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return [dict(p.split("=", 1) for p in line.split() if "=" in p)["JobState"] for line in out.splitlines() if line.strip()]


def wait_until(condition, timeout_s: float = 600, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s}s for {what}"
        time.sleep(0.5)


def jobs_of(run_dir: Path) -> dict[str, str]:
    record = json.loads((run_dir / "slurm.json").read_text())
    return dict(zip(record["kinds"], record["job_ids"]))


def study_trials(sweep_dir: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(sweep_dir / "study.journal")
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


def logs(sweep_dir: Path) -> str:
    return "\n".join(f"{log.name}: {log.read_text()[-1500:]}" for log in sorted((sweep_dir / "logs").glob("*.out")))


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_sweep_array_cancelled_mid_way_and_run_again_finishes_every_trial_once(tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = orch("sweep", *SWEEP, "--slurm", "--sweep-dir", str(sweep_dir))
    assert first.returncode == 0, first.stdout + first.stderr
    array = jobs_of(sweep_dir)["sweep"]
    assert "#SBATCH --array=0-3%2" in (sweep_dir / "job.sbatch").read_text()
    trials = [sweep_dir / "trials" / f"{slot:03d}" for slot in range(4)]

    def one_done_and_another_training() -> bool:
        done = [t for t in trials if (t / "summary.json").exists()]
        if done and any(rows(t) and not (t / "summary.json").exists() for t in trials):
            return True
        assert not all(s in TERMINAL for s in states(array)), logs(sweep_dir)  # the array ended first: say why
        return False

    wait_until(one_done_and_another_training, what="a finished trial beside a training one")
    subprocess.run(["scancel", array], check=True)
    wait_until(lambda: all(s in TERMINAL for s in states(array)), what="the cancelled array to end")
    finished = {t: (t / "metrics.jsonl").read_text() for t in trials if (t / "summary.json").exists()}
    interrupted = [t for t in trials if rows(t) and t not in finished]
    assert finished and len(finished) < 4

    again = orch("sweep", *SWEEP, "--slurm", "--then", "gate", "--sweep-dir", str(sweep_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    second, gate = jobs_of(sweep_dir)["sweep"], jobs_of(sweep_dir)["gate"]
    unfinished = [slot for slot, t in enumerate(trials) if t not in finished]
    assert second != array and f"#SBATCH --array={array_ranges(unfinished)}%" in (sweep_dir / "job.sbatch").read_text()
    wait_until(lambda: all(s in TERMINAL for s in states(second)), what="the second array")
    assert set(states(second)) == {"COMPLETED"}, states(second)  # a pruned trial's task ends cleanly too

    study = study_trials(sweep_dir)
    assert sorted(t.user_attrs["slot"] for t in study) == [0, 1, 2, 3]  # every slot once: nothing ran twice
    by_slot = {t.user_attrs["slot"]: t for t in study}
    assert by_slot[DIVERGING].state.name == "PRUNED" and rows(trials[DIVERGING])[-1]["step"] < 12
    assert all(by_slot[s].state.name == "COMPLETE" for s in range(4) if s != DIVERGING)
    assert all((t / "metrics.jsonl").read_text() == text for t, text in finished.items())  # finished trials untouched
    for t in interrupted:  # resumed from the checkpoint it took when cancelled, not from step 0
        starts = [e for e in map(json.loads, (t / "events.jsonl").read_text().splitlines()) if e["event"] == "start"]
        assert len(starts) >= 2 and starts[-1]["step"] > 0, starts

    wait_until(lambda: states(gate)[0] in TERMINAL, what="the gate job after the array")
    assert states(gate) == ["COMPLETED"], logs(sweep_dir)
    report = orch("sweep", "report", str(sweep_dir))
    assert report.returncode == 0, report.stderr
    finals = {s: json.loads((trials[s] / "summary.json").read_text())["final_val_loss"] for s in range(4) if s != DIVERGING}
    best = min(finals, key=finals.get)
    table = report.stdout.splitlines()
    assert table[2].split()[:3] == ["1", str(best), "complete"] and "1 pruned" in table[0], report.stdout
    assert any(line.split()[1:3] == [str(DIVERGING), "pruned"] for line in table[2:]), report.stdout
    runs = orch("runs", str(sweep_dir / "trials")).stdout
    (row,) = [line.split() for line in runs.splitlines() if line.endswith(str(trials[DIVERGING]))]
    assert row[4:6] == ["PRUNED", f"{rows(trials[DIVERGING])[-1]['step']}/12"], runs  # the step its task's log said it was pruned at
    assert f"trial {DIVERGING}: pruned at step {rows(trials[DIVERGING])[-1]['step']} (" in logs(sweep_dir), logs(sweep_dir)
    page = (sweep_dir / "report.html").read_text()
    assert page.count("<figure>") == 2 and "pruned" in page
    bill = sum(json.loads((t / "energy.json").read_text())["totals"]["facility_kwh"] for t in trials)
    assert f"energy {bill:.4g} kWh" in table[0]

    assert list((trials[best] / "gates").glob("step-*.json"))  # the gate job gated the best trial
    again_best = orch("run", str(sweep_dir / "best.yaml"), "--run-dir", str(tmp_path / "best"))
    assert again_best.returncode == 0, again_best.stderr
    assert json.loads((tmp_path / "best" / "summary.json").read_text())["final_val_loss"] == pytest.approx(finals[best], rel=1e-6)


PIPELINE = ["recipes/tiny-pretrain.yaml", *FAST, *LIGHT_GATES, *ON_SLURM, "train.steps=12",
            "gates.evaluation.tasks=[{name: python_idioms, metric: acc}]"]  # a 12-step model is at chance: scored, not held to a floor


def test_then_gate_release_runs_as_three_jobs_and_a_failed_gate_ends_the_chain(tmp_path):
    clean, diverged = tmp_path / "clean", tmp_path / "diverged"
    for run_dir, extra in ((clean, []), (diverged, ["train.optimizer.lr=30", "train.grad_clip=null", "train.schedule.warmup_steps=1"])):
        result = orch("submit", *PIPELINE, *extra, "--then", "gate,release", "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "(after training succeeds)" in result.stdout and "(after the gates pass)" in result.stdout
    good, bad = jobs_of(clean), jobs_of(diverged)
    assert list(good) == ["train", "gate", "release"]
    wait_until(lambda: states(good["release"])[0] in TERMINAL and states(bad["release"])[0] in TERMINAL, what="both chains")

    assert [states(good[k])[0] for k in good] == ["COMPLETED"] * 3
    (release,) = (clean / "releases").iterdir()
    assert orch("verify", str(release)).returncode == 0
    status = orch("status", str(clean))
    assert f"jobs: train {good['train']} COMPLETED -> gate {good['gate']} COMPLETED -> release {good['release']} COMPLETED" in status.stdout

    assert states(bad["train"]) == ["COMPLETED"] and states(bad["gate"]) == ["FAILED"]
    assert job_fields(bad["gate"])["ExitCode"] == "4:0"  # the gates' own exit code: a required gate failed
    assert states(bad["release"]) == ["CANCELLED"] and not list((diverged / "logs").glob("release-*"))  # it never started
    assert not (diverged / "releases").exists()
    assert f"gate {bad['gate']} FAILED (exit 4)" in orch("status", str(diverged)).stdout


def test_more_trials_at_once_than_the_partition_has_nodes_for_submits_nothing(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = orch("sweep", *SWEEP, "sweep.parallel=3", "--slurm", "--sweep-dir", str(sweep_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: sweep.parallel 3 trials of 1 node(s) need 3 nodes at once, but partition debug has 2: "
                                     "lower sweep.parallel")
    assert not sweep_dir.exists()
