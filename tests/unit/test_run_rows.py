"""The typed rows of a run's logs (`orchestrator/rundir/rows.py`): every event kind written and read
back equal, a run directory written before the rows were typed still read alike by `orch status`,
`show`, `runs` and `report`, and energy-series lines that are no point read past."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.metric_rows import parse_metric_row, parse_series_point
from orchestrator.rundir.rows import Checkpoint, EngineBuilt, KINDS, OtherEvent, Resumed, Start, as_event
from orchestrator.shared.tracking.mirror import Mirror
from orchestrator.tracking.spec import TrackingSpec
from tests.helpers.sinks import Recording

WRITTEN_BY_D92F83D = Path(__file__).parent / "run_fixtures" / "written-by-d92f83d"
"""A two-attempt run of the tiny recipe (4 steps, then resumed to 6) as commit d92f83d wrote it, before
events were typed; its paths moved to /nonexistent/old-run."""

EVERY_FIELD = {
    "start": {"step": 4, "world_size": 2, "peak_flops_per_device": 5.4e10},
    "engine_built": {"rss_before_bytes": [1, 2], "construction_peak_bytes": [3, 4], "peak_rss_bytes": [5, 6]},
    "checkpoint": {"step": 4, "stall_s": 0.04, "bytes": 17123100, "write_s": 0.1, "write_gb_per_s": 0.17,
                   "path": "/r/checkpoints/step-00000004"},
    "checkpoint_set_aside": {"path": "/r/checkpoints/set-aside/step-00000004-1", "reason": "partial save (interrupted before commit)"},
    "resumed": {"checkpoint": "step-00000004", "step": 4, "recomputed_steps": 2},
    "elastic_resume": {"checkpoint": "step-00000004", "from_world_size": 2, "to_world_size": 4, "consumed_samples": 64},
    "started_over": {"recomputed_steps": 3},
    "recipe_changed_on_resume": {"checkpoint": "step-00000004", "changes": ["train.steps: 4 -> 6"]},
    "preempted": {"step": 5, "signal": 10, "saved": True},
    "replicas_diverged": {"step": 5, "digests": ["ab", "cd"]},
    "completed": {"step": 6},
    "energy_budget_warning": {"used": 0.8, "budget": 1.0, "unit": "kWh", "step": 3},
    "energy_budget_exceeded": {"used": 1.2, "budget": 1.0, "unit": "kgCO2e", "step": 4},
    "stopped_over_budget": {"step": 4, "kwh": 1.2, "kgco2e": 0.5, "saved": True},
    "tracking_failed": {"sink": "wandb", "method": "log", "error": "ConnectionError: unreachable"},
    "slurm_submitted": {"job_id": 42, "kind": "train"},
    "slurm_start": {"job_id": 42, "restart": 1, "nodes": "n[1-2]", "end_time": 1.8e9},
    "slurm_signal": {"job_id": 42, "signal": 10},
    "slurm_requeued": {"job_id": 42, "restart": 2},
    "slurm_end": {"job_id": 42, "exit_code": 0},
    "cancel_requested": {"job_id": "42"},
    "stop_requested": {"reason": "pruned"},
    "pruned": {"step": 5, "reason": "below the median at step 5"},
    "hang": {"node": 0, "attempt": 2, "phase": "checkpoint", "step": 8, "timeout_s": 300.0, "stopped_ranks": [1], "stacks": "hangs/2"},
    "attempt_failed": {"attempt": 2, "failure": "crash", "detail": "rank 1 killed by SIGKILL", "ranks": [1], "nodes": ["n2"], "restarting": False,
                       "restarts": 3, "max_restarts": 3, "evidence": "logs/rank-1.log", "no_restart": "no restart left"},
    "loss_rolled_back": {"step": 6, "loss": 9.5, "problem": "9.5 is over 2 x 4.1, the median of the last 20 steps", "checkpoint_step": 4,
                         "data_position": "samples 80-95 of the training stream (epoch 0)", "recomputed_steps": 1},
    "loss_not_recovered": {"step": 6, "loss": 9.5, "problem": "non-finite", "data_position": "samples 80-95 of the training stream (epoch 0)",
                           "rolled_back_to": 4},
    "node_unhealthy": {"job_id": 41, "problems": {"n2": ["node_health_check exited 1: GPU 3 missing"]}, "excluded": True, "replaced": False},
    "attempt_started": {"attempt": 2},
    "ranks_failed": {"node": 1, "attempt": 2, "failure": "crash", "detail": "rank 3 killed by SIGKILL", "ranks": [3],
                     "evidence": "logs/rank-3.log", "quiet_since": 1765000000.5},
    "memory_phases": {"step": 8, "host_before_bytes": [300, 310], "host_peak_bytes": {"setup": [900, 950], "resume": [None, 990]},
                      "host_grown_bytes": {"setup": [500, 520], "resume": [None, 90]}, "device_peak_bytes": {"forward_backward": [4000, 4100]},
                      "device_grown_bytes": {"forward_backward": [1000, 1100]}},
    "straggler": {"step": 40, "ranks": [1], "ratio": 1.5, "window_steps": 20, "per_rank": [[0.01, 0.05, 0.21], [0.21, 0.05, 0.01]]},
    "checkpoint_uploaded": {"step": 8, "url": "s3://bucket/run", "bytes": 17123100, "upload_s": 0.4, "tries": 1,
                            "removed": ["step-00000004"], "prune_error": None},
    "checkpoint_upload_failed": {"step": 8, "url": "s3://bucket/run", "reason": "ConnectionError: unreachable", "tries": 5},
}
"""A value for every field of every kind: a kind added to `rows.KINDS` needs its line here."""


def test_every_kind_has_its_fields_here():
    assert set(EVERY_FIELD) == set(KINDS)
    for name, fields in EVERY_FIELD.items():
        assert set(fields) == set(KINDS[name].model_fields) - {"event", "time"}, name


@pytest.mark.parametrize("name", sorted(EVERY_FIELD))
def test_each_kind_reads_back_as_written(tmp_path, name):
    run = RunDir(tmp_path)
    written = events.append(run.events, KINDS[name](**EVERY_FIELD[name]))
    (read,) = run.history()
    assert type(read) is KINDS[name] and read == written and read.time is not None
    assert json.loads(run.events.read_text()) == {"event": name, "time": written.time, **EVERY_FIELD[name]}  # the line as before


def test_a_kind_not_known_here_is_kept_and_a_missing_field_reads_as_none(tmp_path):
    """A history written by a later version (a kind added) or an earlier one (a field not yet written)."""
    run = RunDir(tmp_path)
    run.events.write_text('{"event": "rolled_back", "time": 1.0, "to": 3}\n{"event": "resumed", "time": 2.0, "step": 3}\n'
                          '{"event": "start", "time": 3.0, "step": "x"}\n{"event": "checkpoint", "time": 4.0, "step": 3}\n')
    other, resumed = run.history()  # a known field of the wrong type, a checkpoint without its figures: no event
    assert isinstance(other, OtherEvent) and other["to"] == 3 and other.describe() is None
    assert isinstance(resumed, Resumed) and resumed.checkpoint is None and resumed.describe() == "resumed from None (step 3)"


def test_a_row_reads_by_key_too():
    """Scripts and benchmarks index rows as the JSON objects they are on disk."""
    start = as_event({"event": "start", "time": 1.0, "step": 0, "host": "n1"})
    assert isinstance(start, Start) and start["step"] == 0 and start.get("world_size") is None and start["host"] == "n1"
    assert "step" in start and "world_size" not in start and dict(start.items())["host"] == "n1"
    with pytest.raises(KeyError):
        start["nothing"]


def test_metric_rows_type_their_figures_and_keep_each_sources_samples():
    """Metric rows stay plain dicts (scripts rewrite the log); their known figures are checked."""
    row = {"step": 3, "loss": 2.5, "mfu": None, "grad_norm": None, "samples/web": 12, "samples/code": 4}
    assert parse_metric_row(row) == row
    assert parse_metric_row({"step": True}) is None and parse_metric_row({"step": 3, "loss": None}) is None
    assert parse_metric_row({"step": 3, "loss": "2.5"}) is None and parse_metric_row({"loss": 2.5}) is None


def test_the_start_up_memory_of_an_earlier_version_reads_and_describes():
    """Before `engine_built` held every rank's figures, each rank wrote one with its numbers."""
    built = as_event({"event": "engine_built", "time": 1.0, "rank": 1, "rss_before_bytes": 2**30, "peak_rss_bytes": 2**31})
    assert isinstance(built, EngineBuilt) and "1.00 GiB" in built.describe()


def _old_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "old-run"
    shutil.copytree(WRITTEN_BY_D92F83D, run_dir)
    return run_dir


def test_a_run_written_before_typed_events_reads_as_it_did(tmp_path):
    run_dir = _old_run(tmp_path)
    run = RunDir(run_dir)
    assert [type(e) for e in run.history()] == [
        EngineBuilt, Start, Checkpoint, KINDS["completed"], EngineBuilt, KINDS["recipe_changed_on_resume"], Resumed, Start, Checkpoint,
        KINDS["completed"]]
    assert [r["step"] for r in run.metric_rows()] == [1, 2, 3, 4, 5, 6] and len(run.energy_points()) == 8
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0 and status.output == f"tiny-pretrain: COMPLETED, step 6/6, loss 7.2173, restarts 1  ({run_dir})\n"
    show = runner.invoke(app, ["show", str(run_dir)])
    assert show.exit_code == 0, show.output
    assert "latest         step 6: loss 7.2173, val loss 7.1963, 3,280 tokens/s, lr 0.0002\n" in show.output
    assert "summary        6 steps in 2s this attempt (18s since the first of 2 attempts), goodput 17%" in show.output
    runs = runner.invoke(app, ["runs", str(tmp_path)])
    assert runs.exit_code == 0 and "COMPLETED" in runs.output and "6/6" in runs.output
    report = runner.invoke(app, ["report", str(run_dir)])
    assert report.exit_code == 0 and 'data-name="vm" data-points="8"' in (run_dir / "report.html").read_text()


def test_an_old_history_with_kinds_and_fields_this_version_lacks_still_shows(tmp_path):
    run_dir = _old_run(tmp_path)
    with (run_dir / "events.jsonl").open("a") as log:
        log.write('{"event": "rolled_back", "time": 1796648160.0, "to": 4}\n{"event": "start", "time": 1796648161.0}\n')
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0 and "STARTED, step 6/6, loss 7.2173, restarts 2" in status.output
    assert runner.invoke(app, ["show", str(run_dir)]).exit_code == 0
    assert "STARTED" in runner.invoke(app, ["runs", str(tmp_path)]).output


NOT_POINTS = '{}\n{"t": "x"}\n[]\n{"time": 1.0, "step": 1, "kwh": 0.1, "nodes": {"n1": {}}}\n'
"""Lines of energy/series.jsonl that parse but are no point (a hand edit, another tool's output, a node without its energy)."""


def test_energy_series_lines_that_are_no_point_are_read_past(tmp_path, monkeypatch):
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECORDING_SINK_FILE", str(record))
    run = RunDir(tmp_path / "run")
    (run.path / "energy").mkdir(parents=True)
    point = {"time": 1.0, "step": 5, "kwh": 0.5, "nodes": {"n1": {"kwh": 0.5, "power_w": 30.0}}}
    run.energy_series.write_text(NOT_POINTS + json.dumps(point) + "\n")
    assert parse_series_point(point) is not None and len(run.energy_points()) == 1
    Mirror(run, TrackingSpec(), [Recording()]).open("tiny", {}).sync()
    logged = [json.loads(line) for line in record.read_text().splitlines() if json.loads(line)["call"] == "log"]
    assert logged == [{"call": "log", "metrics": {"energy/n1/kwh": 0.5, "energy/n1/power_w": 30.0, "energy/total_kwh": 0.5}, "step": 5}]
