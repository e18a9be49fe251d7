"""The training loop's metric rows carry every step's compute and batch fetch, whatever
`train.log_interval` (issue 31's goodput ledger): a Trainer's `step` on fakes and a fake clock, so the
figures are exact."""

from types import SimpleNamespace

import pytest

from launch import loop
from orchestrator.shared.goodput import ledger
from orchestrator.rundir.rows import Start


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(clock: Clock, logged: list[dict], log_interval: int, steps: int) -> loop.Trainer:
    """A Trainer whose batch fetch takes 0.25 s, each step's compute 1 s and evaluation 0.5 s, on `clock`."""

    def fetch(_index):
        clock.now += 0.25 / 2
        return [0]

    def compute(_batch, loss_factor):
        clock.now += 1.0
        return 1.0

    def evaluate(_step):
        clock.now += 0.5
        return 1.0

    trainer = object.__new__(loop.Trainer)
    trainer.recipe = SimpleNamespace(train=SimpleNamespace(log_interval=log_interval, eval_interval=steps, steps=steps, replica_check_interval=0))
    trainer.engine = SimpleNamespace(lr=0.1, grad_norm=1.0, train_step=compute, mean_across_ranks=lambda values: values,
                                     memory=SimpleNamespace(begin=lambda: None, stretch_bytes=0))
    trainer.monitor = SimpleNamespace(phase=lambda *args: None)
    trainer.stream = SimpleNamespace(step_indices=lambda: [0, 1], last_step_sources=lambda: None)
    trainer.train_data = SimpleNamespace(rows=fetch)
    trainer.faults = SimpleNamespace(fire=lambda step: 1.0)
    trainer.guard = SimpleNamespace(check=lambda step, loss: None)
    trainer.stragglers = None  # one rank: no peers to compare with
    trainer.account = SimpleNamespace(latest_kwh=None)
    trainer.tokens_per_step, trainer.flops_per_step, trainer.peak_flops = 100, 1.0, 0.0
    trainer.unlogged = {"compute_s": 0.0, "data_s": 0.0}
    trainer.evaluate = evaluate
    trainer.log = logged.append
    return trainer


def test_rows_logged_every_few_steps_carry_all_their_steps_time(monkeypatch):
    clock, logged = Clock(), []
    monkeypatch.setattr(loop.time, "perf_counter", clock)
    trainer = fake_trainer(clock, logged, log_interval=4, steps=8)
    for step in range(1, 9):
        trainer.step(step)
    assert [row["step"] for row in logged] == [4, 8]
    assert [(row["compute_s"], row["data_s"]) for row in logged] == [(4.0, 1.0), (4.0, 1.0)]
    assert logged[-1]["eval_s"] == 0.5 and "eval_s" not in logged[0]
    assert logged[0]["step_s"] == 1.25  # one step's fetch and compute, as the throughput figures use it
    # the ledger counts all 8 steps' compute; summing the logged rows' step_s counted 2 of them
    spent = ledger([Start(step=0, time=0.0)], logged, end=clock.now)
    assert spent.productive_s == pytest.approx(8.0) and spent.badput.data_s == pytest.approx(2.0)
    assert spent.badput.eval_s == pytest.approx(0.5) and spent.wall_s == pytest.approx(10.5) and spent.badput.other_s == pytest.approx(0)


def test_a_checkpoint_at_a_step_not_logged_logs_it_first(monkeypatch):
    """The checkpoint keeps a copy of the metrics, which a resume goes back to: without the row of the
    step it saved, the time of the steps since the previous row would be lost from the ledger."""
    clock, logged, saved = Clock(), [], []
    monkeypatch.setattr(loop.time, "perf_counter", clock)
    monkeypatch.setattr(loop.rank_state, "capture", lambda *args: None)
    trainer = fake_trainer(clock, logged, log_interval=4, steps=6)
    trainer.world, trainer.peak_flops_per_device = 1, 1.0
    trainer.resume, trainer.event, trainer.finish = (lambda: 0), (lambda event: None), (lambda: None)
    trainer.engine.any_across_ranks = lambda flags: flags
    trainer.account = SimpleNamespace(latest_kwh=None, over_budget=False, settle=lambda *args: None)
    trainer.stop = SimpleNamespace(requested=False)
    trainer.policy = SimpleNamespace(time_due=lambda: False, save_fits=lambda: True, step_due=lambda step: step == 3)
    trainer.stream.state_dict = lambda: {}
    trainer.save, trainer.saver, trainer.is_logger = saved.append, SimpleNamespace(close=lambda: None), True
    assert trainer.train() == 0
    assert saved == [3, 6] and [row["step"] for row in logged] == [3, 4, 6]
    assert [row["compute_s"] for row in logged] == [3.0, 1.0, 2.0]
