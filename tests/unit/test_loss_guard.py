"""Which losses the training loop rolls back instead of training on, and how it names where they happened."""

from __future__ import annotations

import math

from orchestrator.shared.data.stream import StreamPosition
from launch.loss_guard import MIN_RECENT_STEPS, RECENT_STEPS, LossGuard, data_position, loss_problem


def test_a_non_finite_loss_is_always_bad():
    for loss in (math.nan, math.inf, -math.inf):
        assert loss_problem(loss, [], None) == "non-finite"
        assert loss_problem(loss, [2.0] * 10, 3.0) == "non-finite"


def test_a_spike_is_measured_against_the_recent_median():
    recent = [4.0, 2.0, 2.0, 2.0, 100.0]  # one outlier does not move the median
    assert loss_problem(6.0, recent, 3.0) is None
    assert loss_problem(6.01, recent, 3.0) == "6.01 is over 3 x 2, the median of the last 5 steps"
    assert loss_problem(1000.0, recent, None) is None  # no spike limit set
    assert loss_problem(1000.0, recent[:MIN_RECENT_STEPS - 1], 3.0) is None  # too few losses yet


def test_the_guard_keeps_good_losses_and_forgets_those_rolled_back():
    guard = LossGuard(max_spike=2.0)
    for step in range(1, 31):
        assert guard.check(step, 5.0) is None
    assert len(guard.recent) == RECENT_STEPS
    assert guard.check(31, 11.0) and guard.check(31, math.nan) == "non-finite"
    assert guard.recent[-1] == (30, 5.0)  # bad losses are not recorded
    guard.rewind(24)
    assert guard.recent[-1] == (24, 5.0) and len(guard.recent) == RECENT_STEPS - 6


def test_the_data_position_names_the_global_samples_of_the_step():
    position = StreamPosition(consumed_samples=96, seed=1, num_sequences=40)
    assert data_position(position, 16) == "samples 80-95 of the training stream (epoch 2)"
    assert data_position(position.model_copy(update={"mixture": 7}), 16) == "samples 80-95 of the training stream"
