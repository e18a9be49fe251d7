"""The mirror on a run directory written by hand: what reaches a sink, once, and a failing sink."""

from __future__ import annotations

import json

from pathlib import Path

from orchestrator.watching.page import svg_chart
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir import events
from orchestrator.watching.status import RunStatus, matches
from orchestrator.shared.tracking.mirror import Mirror, event_metrics
from orchestrator.tracking.spec import TrackingSpec
from orchestrator.rundir.rows import Checkpoint
from tests.helpers.sinks import Exploding, Recording


def _calls(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _append_rows(run: RunDir, steps):
    with run.metrics.open("a") as out:
        for step in steps:
            out.write(json.dumps({"step": step, "loss": 10.0 / step, "lr": 0.1, "grad_norm": None, "tokens_per_s": 100.0}) + "\n")


def test_rows_events_and_energy_reach_the_sink_once_and_a_resume_continues(tmp_path, monkeypatch):
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECORDING_SINK_FILE", str(record))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    _append_rows(run, range(1, 6))
    events.append(run.events, Checkpoint(step=5, stall_s=0.1, bytes=100, write_s=0.2, path="x"))
    (run.path / "energy").mkdir()
    (run.path / "energy/series.jsonl").write_text(json.dumps({"time": 1.0, "step": 5, "kwh": 0.5, "nodes": {"n1": {"kwh": 0.3}, "n2": {"kwh": 0.2}}}) + "\n")
    spec = TrackingSpec(custom=["tests.helpers.sinks:Recording"])

    mirror = Mirror(run, spec, [Recording()]).open("tiny", {"a": 1})
    mirror.sync()
    mirror.sync()  # nothing new: nothing sent twice
    logged = [c for c in _calls(record) if c["call"] == "log"]
    assert [c["step"] for c in logged if "loss" in c["metrics"]] == [1, 2, 3, 4, 5]
    assert "grad_norm" not in logged[0]["metrics"]  # None is not a number to plot
    assert any(c["metrics"].get("checkpoint/stall_s") == 0.1 for c in logged)
    assert any(c["metrics"].get("energy/n2/kwh") == 0.2 and c["step"] == 5 for c in logged)

    # a resumed attempt: metrics rewritten to the checkpoint (step 3), steps 4-7 trained again
    run.write_file(run.metrics.name, "\n".join(run.metrics.read_text().splitlines()[:3]) + "\n")
    _append_rows(run, range(4, 8))
    again = Mirror(run, spec, [Recording()]).open("tiny", {"a": 1})
    again.sync()
    calls = _calls(record)
    assert calls[-1]["call"] == "log" and [c for c in calls if c["call"] == "open"][-1]["ids"] == {"recording_id": "rec-1"}
    steps = [c["step"] for c in calls if c["call"] == "log" and "loss" in c["metrics"]]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # no step twice
    assert json.loads(run.tracking.read_text())["last_step"] == 7


def test_a_failing_sink_is_reported_once_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECORDING_SINK_FILE", str(record))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    _append_rows(run, range(1, 4))
    mirror = Mirror(run, TrackingSpec(), [Exploding(), Recording()]).open("tiny", {})
    mirror.sync()
    _append_rows(run, range(4, 6))
    mirror.sync()
    mirror.close()
    failures = [e for e in events.read(run.events) if e["event"] == "tracking_failed"]
    assert len(failures) == 1 and failures[0]["sink"] == "exploding" and "unreachable" in failures[0]["error"]
    assert capsys.readouterr().out.count("tracking: exploding failed") == 1
    assert [c["step"] for c in _calls(record) if c["call"] == "log"] == [1, 2, 3, 4, 5]


def test_event_metrics():
    assert event_metrics({"event": "resumed", "step": 20, "recomputed_steps": 3}) == {"restarts/resumed_from_step": 20, "restarts/recomputed_steps": 3}
    assert event_metrics({"event": "start", "step": 0}) == {}
    rolled_back = {"event": "loss_rolled_back", "step": 6, "loss": float("nan"), "checkpoint_step": 4, "recomputed_steps": 1}
    assert event_metrics(rolled_back) == {"faults/loss_rolled_back_to_step": 4, "restarts/recomputed_steps": 1}  # never the NaN itself
    assert event_metrics({"event": "loss_not_recovered", "step": 6}) == {"faults/loss_not_recovered": 1.0}
    # The failure classes, hangs, stragglers and unhealthy nodes reach the dashboards as counts.
    assert event_metrics({"event": "attempt_failed", "failure": "hang", "restarting": True}) == {"faults/hang": 1.0, "restarts/in_job": 1.0}
    assert event_metrics({"event": "attempt_failed", "failure": "oom", "restarting": False}) == {"faults/oom": 1.0, "restarts/in_job": 0.0}
    assert event_metrics({"event": "hang", "timeout_s": 5.0, "stopped_ranks": [1]}) == {"faults/hang_timeout_s": 5.0, "faults/hang_stopped_ranks": 1.0}
    assert event_metrics({"event": "straggler", "step": 40, "ranks": [1, 3]}) == {"faults/stragglers": 2.0}
    assert event_metrics({"event": "node_unhealthy", "problems": {"n2": ["disk full"]}}) == {"faults/node_unhealthy": 1.0}


def test_run_filters():
    status = RunStatus(Path("/r"), "tiny-pretrain", "COMPLETED", 5, 5, 1.0, 0, task="pretrain", backend="horovod")
    assert matches(status, {"state": "comp", "name": "TINY", "task": "pretrain", "backend": "horovod"})
    assert not matches(status, {"backend": "deepspeed"}) and not matches(status, {"state": "running"})
    assert matches(status, {"state": None, "name": None})


def test_a_chart_with_nothing_says_so_and_one_with_data_draws_it():
    assert "nothing recorded" in svg_chart("Loss", {"loss": []}, "step", "loss")
    svg = svg_chart("Loss", {"loss": [(1, 3.0), (2, 2.0), (3, 1.5)]}, "step", "loss")
    assert 'data-points="3"' in svg and "<polyline" in svg


def test_mlflow_gets_names_it_accepts_and_its_store_stays_in_the_run_whatever_the_run_is_called(tmp_path):
    from orchestrator.rundir.layout import RunDir
    from orchestrator.shared.tracking.sinks import MlflowSink, RunIdentity
    from orchestrator.tracking.spec import MlflowSpec

    run_dir = tmp_path / "run #1 %41"  # pasted into the URI unquoted, `#` cut the path and `%41` read as `A`
    run_dir.mkdir()
    sink = MlflowSink(MlflowSpec(enabled=True))
    ids = sink.open(RunIdentity(run_dir, "tiny", {"recipe": {"train": {"steps": 3}}}))
    sink.log({"energy/n1/gpu:GPU-1234_w": 250.0, "loss": 2.5}, step=3)
    sink.close()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=ids["mlflow_tracking_uri"])
    assert [(m.step, m.value) for m in client.get_metric_history(ids["mlflow_run_id"], "energy/n1/gpu_GPU-1234_w")] == [(3, 250.0)]
    assert client.get_run(ids["mlflow_run_id"]).data.params["recipe.train.steps"] == "3"
    assert RunDir(run_dir).mlflow_db.is_file() and [p.name for p in tmp_path.iterdir()] == [run_dir.name]


KILLED_WANDB_RUN = """
import os, sys, wandb
settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
for run_id in ("closedrun", "killedrun"):
    run = wandb.init(project="p", id=run_id, mode="offline", dir=sys.argv[1], settings=settings)
    run.log({"loss": 1.0}, step=1)
    if run_id == "killedrun":
        os.kill(os.getpid(), 9)
    run.finish()
"""


def test_an_offline_wandb_run_killed_before_writing_is_dropped_and_a_closed_one_kept(tmp_path):
    """A SIGKILLed attempt leaves a header-only run file (wandb writes at close); `wandb sync` would
    upload it as a separate id-less run, so the next attempt's wandb sink removes it."""
    import subprocess
    import sys

    from orchestrator.shared.tracking.sinks import drop_empty_offline_runs

    subprocess.run([sys.executable, "-c", KILLED_WANDB_RUN, str(tmp_path)], timeout=300)
    runs = {p.name.rsplit("-", 1)[1]: p for p in (tmp_path / "wandb").glob("offline-run-*")}
    assert set(runs) == {"closedrun", "killedrun"}

    assert drop_empty_offline_runs(tmp_path / "wandb") == [runs["killedrun"]]
    assert runs["closedrun"].is_dir() and not runs["killedrun"].exists()


WANDB_FIELD_DESCRIPTIONS = """
import json, sys
from pydantic import BaseModel
from pydantic._internal import _docs_extraction
walk = _docs_extraction._extract_source_from_frame
if sys.argv[1] == "import_wandb":
    from orchestrator.shared.tracking.sinks import import_wandb
    import_wandb()
else:
    import wandb, wandb.sdk.internal.datastore
assert _docs_extraction._extract_source_from_frame is walk, "pydantic left patched"
found = {}
for name, module in list(sys.modules.items()):
    for attr, value in vars(module).items() if name.startswith("wandb") and module else ():
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == name:
            found.update({f"{name}.{attr}.{f}": info.description for f, info in value.model_fields.items() if info.description})
print(json.dumps(found))
"""


def test_import_wandb_gives_wandb_models_the_same_field_descriptions_and_leaves_pydantic_as_it_was():
    """`import_wandb` changes how pydantic finds wandb's source, for that import only: the models
    describe their fields exactly as after a plain `import wandb`."""
    import subprocess
    import sys

    found = {}
    for how in ("import_wandb", "plain"):
        result = subprocess.run([sys.executable, "-c", WANDB_FIELD_DESCRIPTIONS, how], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        found[how] = json.loads(result.stdout)
    assert len(found["plain"]) > 100 and found["import_wandb"] == found["plain"]
