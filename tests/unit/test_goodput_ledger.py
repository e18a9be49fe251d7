"""The goodput ledger (issue 31): a hand-built history with every cause, each counted once, the parts
adding up to the wall time; metric rows of `train.log_interval` > 1 counted for every step."""

import json
import time

import pytest

from orchestrator.rundir.checkpoint_records import RunSummary
from orchestrator.rundir.recovery_events import AttemptFailed, AttemptStarted, Hang, LossRolledBack
from orchestrator.rundir.rows import Checkpoint, Completed, EngineBuilt, Preempted, Resumed, SlurmRequeued, SlurmStart, Start
from orchestrator.shared.goodput import CAUSES, GoodputLedger, energy_by_cause, ledger


def at(time: float, event):
    return event.model_copy(update={"time": time})


def checkpoint(time: float, step: int, stall_s: float):
    return at(time, Checkpoint(step=step, stall_s=stall_s, bytes=1, write_s=0.1))


def row(step: int, compute_s: float = 2.0, data_s: float = 0.5, **extra) -> dict:
    return {"step": step, "loss": 1.0, "step_s": 1.0, "compute_s": compute_s, "data_s": data_s, **extra}


HISTORY = [
    at(100, AttemptStarted(attempt=1)),
    at(110, Start(step=0)),                      # start-up 10 s
    checkpoint(120, 4, stall_s=0.5),
    at(125, Hang(timeout_s=3.0, step=6, phase="step", stopped_ranks=[1])),  # lost 120 -> 122, hang 122 -> 125
    at(126, AttemptFailed(attempt=1, failure="hang", restarting=True)),
    at(127, AttemptStarted(attempt=2)),
    at(130, Resumed(checkpoint="step-00000004", step=4, recomputed_steps=1)),
    at(131, Start(step=4)),                      # restart 125 -> 131
    at(136, LossRolledBack(step=7, checkpoint_step=4, recomputed_steps=1)),  # lost 131 -> 136
    checkpoint(145, 8, stall_s=0.5),
    at(146, Completed(step=8)),
]
ROWS = [row(2), row(4, eval_s=1.0, val_loss=1.0), row(6), row(8, eval_s=1.0, val_loss=1.0)]
"""Logged every 2 steps: each row's compute and batch fetch are those of its 2 steps."""


def test_each_cause_is_counted_and_the_parts_add_up_to_the_wall_time():
    spent = ledger(HISTORY, ROWS, end=150)
    assert spent.wall_s == 50  # from the first attempt's launch
    assert spent.productive_s == 8  # 4 rows x 2 s, every step once
    assert spent.by_cause() == pytest.approx({"startup": 10, "checkpoint": 1, "recomputed": 2 + 5, "restart": 6, "hang": 3,
                                              "eval": 2, "data": 2, "other": 11})
    assert spent.productive_s + sum(spent.by_cause().values()) == pytest.approx(spent.wall_s)
    assert spent.goodput == pytest.approx(8 / 50)


def test_a_run_resumed_in_a_new_directory_counts_only_the_steps_it_trained():
    """A run directory whose first attempt resumed a checkpoint trained elsewhere (fetched from object
    storage) holds that run's rows up to it: counting them read 227% goodput on the README's example."""
    history = [at(0, AttemptStarted(attempt=1)), at(5, Resumed(checkpoint="step-00000150", step=150, recomputed_steps=0)),
               at(6, Start(step=150)), at(16, Completed(step=200))]
    rows = [row(step, compute_s=0.2, data_s=0.0) for step in range(1, 201)]
    spent = ledger(history, rows, end=16)
    assert spent.productive_s == pytest.approx(50 * 0.2) and spent.goodput == pytest.approx(10 / 16)


def test_rows_logged_every_few_steps_count_every_step():
    """Before the ledger, goodput summed the logged rows' `step_s` alone: a log interval of 5 counted a
    fifth of the steps. Rows written before `compute_s` count their `step_s` once per step they cover."""
    history = [at(0, Start(step=0)), at(20, Completed(step=10))]
    logged = [{"step": 5, "step_s": 1.0, "compute_s": 4.5, "data_s": 0.5}, {"step": 10, "step_s": 1.0, "compute_s": 4.5, "data_s": 0.5}]
    assert ledger(history, logged, end=20).productive_s == 9
    assert ledger(history, logged, end=20).badput.data_s == 1
    old = [{"step": 5, "step_s": 1.0}, {"step": 10, "step_s": 1.0}]
    assert ledger(history, old, end=20).productive_s == 10


def test_a_slurm_requeue_wait_is_restart_and_a_saved_preemption_loses_nothing():
    history = [
        at(0, SlurmStart(job_id=1)), at(5, AttemptStarted(attempt=1)), at(10, Start(step=0)),
        checkpoint(30, 4, stall_s=1.0), at(31, Preempted(step=4, saved=True)), at(32, SlurmRequeued(job_id=1, restart=1)),
        at(100, SlurmStart(job_id=1, restart=1)), at(104, AttemptStarted(attempt=2)), at(110, Start(step=4)),
    ]
    spent = ledger(history, [row(4, compute_s=10.0, data_s=0.0), row(8, compute_s=10.0, data_s=0.0)], end=130)
    assert spent.wall_s == 130 and spent.badput.startup_s == 10  # from the job's start
    assert spent.badput.restart_s == 110 - 31 and spent.badput.recomputed_s == 0
    assert spent.productive_s + sum(spent.by_cause().values()) == pytest.approx(130)


def test_a_crash_loses_the_training_since_the_last_checkpoint():
    history = [at(0, AttemptStarted(attempt=1)), at(2, Start(step=0)), checkpoint(10, 4, 0.0),
               at(15, AttemptFailed(attempt=1, failure="crash", restarting=True)), at(16, AttemptStarted(attempt=2)), at(18, Start(step=4))]
    spent = ledger(history, [], end=20)
    assert (spent.badput.recomputed_s, spent.badput.restart_s, spent.badput.hang_s) == (5, 3, 0)


def test_the_remainder_is_never_negative():
    """Measured parts overlapping the timeline (clock noise) leave `other` at 0, not below."""
    spent = ledger([at(0, Start(step=0))], [row(1, compute_s=12.0)], end=10)
    assert spent.badput.other_s == 0 and spent.productive_s == 12


def test_no_start_yet_is_an_empty_ledger():
    assert ledger([at(0, AttemptStarted(attempt=1))], [], end=10).wall_s == 0


def test_the_summary_holds_the_ledger_and_reads_back(tmp_path):
    spent = ledger(HISTORY, ROWS, end=150)
    written = json.loads(RunSummary(status="completed", goodput=spent.goodput, ledger=spent).model_dump_json())
    assert written["ledger"]["goodput"] == pytest.approx(8 / 50)
    assert RunSummary.from_file(written).ledger == spent
    assert set(CAUSES) == {"startup", "checkpoint", "recomputed", "restart", "hang", "eval", "data", "other"}
    assert GoodputLedger.model_validate(written["ledger"]) == spent


def _run_dir(root, history, rows, summary=None):
    from orchestrator.recipe.loader import load_recipe
    from orchestrator.rundir.records import recipe_yaml
    from tests.helpers.project import TINY

    run = root / "run"
    (run / "logs").mkdir(parents=True)
    (run / "recipe.yaml").write_text(recipe_yaml(load_recipe(TINY, ["train.steps=10", "train.schedule.warmup_steps=2"]).recipe))
    (run / "events.jsonl").write_text("".join(json.dumps(e.line()) + "\n" for e in history))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        (run / "summary.json").write_text(summary.model_dump_json())
    return run


def test_status_shows_a_live_runs_ledger_up_to_now_and_a_completed_runs_from_its_summary(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.watching.status import local_status

    now = time.time()
    live = [at(now - 60, AttemptStarted(attempt=1)), at(now - 50, Start(step=0)), checkpoint(now - 30, 4, stall_s=2.0),
            at(now - 20, AttemptFailed(attempt=1, failure="crash", restarting=True)), at(now - 19, AttemptStarted(attempt=2))]
    run = _run_dir(tmp_path / "live", live, [row(2), row(4)])
    status = local_status(run)
    assert status.state == "RESTARTING" and status.ledger.wall_s >= 60
    assert status.ledger.badput.startup_s == 10 and status.ledger.badput.recomputed_s == 10
    shown = CliRunner().invoke(app, ["status", str(run)]).output
    assert "goodput " in shown and "startup 10.0 s" in shown and "recomputed 10.0 s" in shown

    spent = ledger(HISTORY, ROWS, end=150)
    done = _run_dir(tmp_path / "done", HISTORY, ROWS, RunSummary(status="completed", goodput=spent.goodput, ledger=spent))
    assert local_status(done).ledger == spent
    assert "goodput 16%: 8.0 s productive of 50.0 s; badput startup 10.0 s, checkpoint 1.0 s, recomputed 7.0 s" in \
        CliRunner().invoke(app, ["status", str(done)]).output
    page = CliRunner().invoke(app, ["report", str(done), "--out", str(tmp_path / "report.html")])
    assert page.exit_code == 0, page.output
    assert "<h2>Goodput</h2>" in (tmp_path / "report.html").read_text()


def test_the_dashboards_get_the_ledger_with_the_completed_event(tmp_path, monkeypatch):
    from orchestrator.rundir import events
    from orchestrator.rundir.checkpoint_records import write_summary
    from orchestrator.rundir.layout import RunDir
    from orchestrator.shared.tracking.mirror import Mirror
    from orchestrator.tracking.spec import TrackingSpec
    from tests.helpers.sinks import Recording

    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECORDING_SINK_FILE", str(record))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    spent = ledger(HISTORY, ROWS, end=150)
    write_summary(run, RunSummary(status="completed", goodput=spent.goodput, ledger=spent))
    events.append(run.events, Completed(step=8))
    Mirror(run, TrackingSpec(custom=["tests.helpers.sinks:Recording"]), [Recording()]).open("tiny", {}).sync()
    sent = {k: v for line in record.read_text().splitlines() for k, v in json.loads(line).get("metrics", {}).items()}
    assert sent["goodput/goodput"] == pytest.approx(8 / 50) and sent["goodput/wall_s"] == 50
    assert sent["goodput/badput/recomputed_s"] == pytest.approx(7) and sent["goodput/badput/other_s"] == pytest.approx(11)


def test_energy_by_cause_joins_the_bills_phases():
    """Start-up, checkpoint, restart and evaluation are phases of the bill; productive is the train phase
    less its recomputed part, of which the hang's wait is taken at the training's mean power (10 kWh
    over 8 s productive + 7 s recomputed + 3 s hang + 2 s data: 3 s of it, 1.5 kWh); the other phases
    (idle) are `other`."""
    spent = energy_by_cause(ledger(HISTORY, ROWS, end=150), {"startup": 1.0, "train": 10.0, "eval": 2.0, "checkpoint": 0.5,
                                                             "restart": 0.7, "idle": 0.1}, recomputed_kwh=3.0)
    assert spent.energy_kwh == pytest.approx({"startup": 1.0, "checkpoint": 0.5, "restart": 0.7, "eval": 2.0, "productive": 7.0,
                                              "recomputed": 1.5, "hang": 1.5, "other": 0.1})
    assert sum(spent.energy_kwh.values()) == pytest.approx(14.3)  # every kWh of the bill, once
    assert RunSummary.from_file(json.loads(RunSummary(status="completed", ledger=spent).model_dump_json())).ledger == spent


def test_an_attempt_that_ended_without_a_word_counts_from_its_last_event():
    """A history from before `attempt_failed` (a crash, then a new `orch run`): the next attempt's set-up
    events are not taken for the crashed attempt's last ones."""
    history = [at(0, Start(step=0)), checkpoint(10, 4, 0.0), at(12, Checkpoint(step=5, stall_s=0.0, bytes=1, write_s=0.1)),
               at(40, EngineBuilt()), at(41, Resumed(checkpoint="step-00000005", step=5)), at(42, Start(step=5))]
    spent = ledger(history, [], end=50)
    assert (spent.badput.recomputed_s, spent.badput.restart_s) == (0, 30)


def test_orch_runs_done_lines_end_with_the_ledger():
    from pathlib import Path

    from orchestrator.watching.progress import ProgressView

    spent = ledger(HISTORY, ROWS, end=150)
    summary = {"status": "completed", "steps": 8, "first_loss": 7.6, "final_loss": 5.1, "tokens_per_s": 2100.0, "mfu": 0.21, "wall_s": 50.0}
    done = ProgressView.describe_summary(RunSummary(**summary, ledger=spent), Path("runs/x"))
    assert done.splitlines()[-1] == f"time          {spent.describe()}"
    assert "goodput" not in ProgressView.describe_summary(RunSummary(**summary), Path("runs/x"))
