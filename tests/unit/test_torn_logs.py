"""The run directory's logs survive a crash mid-write: a torn line in `events.jsonl` or
`metrics.jsonl` (what a kill or a full disk leaves) is skipped by every reader, and the next append
starts a whole line after it."""

import json

from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import recipe_yaml
from orchestrator.rundir.rows import Checkpoint, Resumed
from tests.helpers.planning import write_plan
from tests.helpers.project import TINY

TORN_EVENT = '{"event": "checkpoint", "time": 17.5, "st'
TORN_ROW = '{"step": 4, "loss": 6.9'


def crashed_run(tmp_path) -> RunDir:
    """A run that died while rank 0 was appending to both logs."""
    run = RunDir(tmp_path / "crashed")
    write_plan(run.path)
    run.recipe.write_text(recipe_yaml(load_recipe(TINY, ["name=crashed"]).recipe))
    rows = [{"step": s, "loss": 8.0 - s / 10, "lr": 1e-3, "tokens_per_s": 1000.0} for s in (1, 2, 3)]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + TORN_ROW)
    run.events.write_text(json.dumps({"event": "start", "time": 1.0, "step": 0}) + "\n" + TORN_EVENT)
    return run


def test_readers_skip_a_torn_last_line(tmp_path):
    run = crashed_run(tmp_path)
    assert [r["step"] for r in run.metric_rows()] == [1, 2, 3]
    assert [e["event"] for e in run.history()] == ["start"]


def test_an_append_after_a_torn_line_stays_whole(tmp_path):
    run = crashed_run(tmp_path)
    events.append(run.events, Resumed(step=3))
    events.append_row(run.metrics, {"step": 4, "loss": 6.9})
    assert [e["event"] for e in run.history()] == ["start", "resumed"]
    assert [r["step"] for r in run.metric_rows()] == [1, 2, 3, 4]
    assert run.events.read_text().count(TORN_EVENT + "\n") == 1  # closed, not glued to the next row


def test_status_show_and_runs_read_a_crashed_run(tmp_path):
    run = crashed_run(tmp_path)
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(run.path)])
    assert status.exit_code == 0 and "crashed: STARTED, step 3/" in status.output and "loss 7.7000" in status.output
    show = runner.invoke(app, ["show", str(run.path)])
    assert show.exit_code == 0 and "latest         step 3: loss 7.7000" in show.output
    runs = runner.invoke(app, ["runs", str(tmp_path)])
    assert runs.exit_code == 0 and "crashed" in runs.output and "STARTED" in runs.output


def test_readers_skip_lines_that_parse_but_are_no_rows(tmp_path):
    """A hand edit or another tool's output: JSON, but not what the CLI indexes; read past like a torn line."""
    run = crashed_run(tmp_path)
    run.metrics.write_text(run.metrics.read_text() + "\n" + "\n".join(
        ['{}', '[]', '1', '{"step": "x"}', '{"step": true}', '{"step": 4.5}', '{"step": 4, "loss": "x"}', '{"step": 4, "lr": null}']) + "\n")
    run.events.write_text(run.events.read_text() + "\n" + "\n".join(
        ['{}', '"start"', '{"event": 3}', '{"event": "resumed", "time": "x"}', '{"event": "resumed", "step": "3"}',
         '{"event": "checkpoint", "time": 2.0, "step": 3}', "[" * 100_000]) + "\n")
    events.append_row(run.metrics, {"step": 4, "loss": 6.9, "mfu": None})
    events.append(run.events, Checkpoint(step=4, stall_s=0.1, write_s=0.2, bytes=10))
    assert [r["step"] for r in run.metric_rows()] == [1, 2, 3, 4]
    assert [e["event"] for e in run.history()] == ["start", "checkpoint"]
