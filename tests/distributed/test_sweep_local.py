"""`orch sweep --local` on real runs: trials one after another, a diverging one pruned through the
run's own stop path, and the trials grouped in the dashboards (an MLflow parent run, a wandb group)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.processes import orch
from tests.helpers.project import FAST
from tests.distributed.test_dashboards import wandb_steps

pytestmark = pytest.mark.distributed


def test_a_local_sweep_prunes_the_diverging_trial_and_groups_the_trials_in_the_dashboards(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = orch("sweep", "recipes/tiny-sweep.yaml", *FAST, "train.steps=6", "train.eval_interval=2", "train.eval_batches=1",
                  "train.grad_clip=null", "sweep.parameters={train.optimizer.lr: {choices: [0.002, 30.0]}}", "sweep.sampler=grid",
                  "sweep.trials=2", "sweep.pruner.startup_trials=1", "sweep.pruner.warmup_steps=0",
                  "tracking.wandb.enabled=true", "tracking.mlflow.enabled=true", "--local", "--sweep-dir", str(sweep_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    trials = [sweep_dir / "trials" / f"{slot:03d}" for slot in (0, 1)]
    pruned = [json.loads(line) for line in (trials[1] / "events.jsonl").read_text().splitlines()]
    # stopped as a preempted run is (a checkpoint at the step it stopped, then the signal's event), then told pruned
    assert [e["event"] for e in pruned][-3:] == ["checkpoint", "preempted", "pruned"] and pruned[-2]["saved"]
    stopped = pruned[-1]["step"]  # the ranks train on while the judge decides: at or past the evaluation at step 2
    assert stopped == pruned[-2]["step"] >= 2
    assert "trial 0: complete" in result.stdout
    assert re.search(rf"trial 1: pruned at step {stopped} \(val_loss \S+ at step 2 was (not finite|past diverged_above 20)\)", result.stdout)
    table = orch("runs", str(sweep_dir / "trials")).stdout
    (row,) = [line.split() for line in table.splitlines() if line.endswith(str(trials[1]))]
    assert row[4:6] == ["PRUNED", f"{stopped}/6"], table  # not PREEMPTED, and the step the sweep said
    assert not (trials[1] / "summary.json").exists() and (sweep_dir / "best.yaml").exists() and (sweep_dir / "report.html").exists()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{sweep_dir.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("orchestrator").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("orchestrator.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "sweep" and len(children) == 2 and len(runs) == 3
    for trial in trials:
        assert len(wandb_steps(trial)) == 1
        (run_file,) = trial.glob("wandb/offline-run-*/run-*.wandb")
        assert group_of(run_file) == "sweep"


def group_of(path: Path) -> str:
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(str(path))
    while (record := store.scan_record()) is not None:
        message = wandb_internal_pb2.Record()
        message.ParseFromString(record[1])
        if message.WhichOneof("record_type") == "run":
            return message.run.run_group
    return ""
