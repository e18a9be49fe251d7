"""`orch status` and `orch runs` read the run directory (no scheduler involved for local runs)."""

import json

from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.records import recipe_yaml
from tests.conftest import TINY


def fake_run(root, name, events, rows, summary=None):
    run = root / name
    (run / "logs").mkdir(parents=True)
    (run / "recipe.yaml").write_text(recipe_yaml(load_recipe(TINY, [f"name={name}", "train.steps=10", "train.schedule.warmup_steps=2"]).recipe))
    (run / "events.jsonl").write_text("".join(json.dumps({"event": e, "time": 0}) + "\n" for e in events))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": l}) + "\n" for s, l in rows))
    if summary:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_status_and_runs_table(tmp_path):
    done = fake_run(tmp_path, "done", ["start", "start", "completed"], [(9, 2.5), (10, 2.0)], {"status": "completed"})
    fake_run(tmp_path, "stopped", ["start", "preempted"], [(1, 7.0)])
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(done)])
    assert status.exit_code == 0
    assert status.output.strip() == f"done: COMPLETED, step 10/10, loss 2.0000, restarts 1  ({done})"
    table = runner.invoke(app, ["runs", str(tmp_path)])
    assert "PREEMPTED" in table.output and "COMPLETED" in table.output
    only = runner.invoke(app, ["runs", str(tmp_path), "--state", "preempted"])
    assert "stopped" in only.output and "done " not in only.output


def test_status_of_a_non_run_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "not a run directory" in result.output
