"""The straggler report's arithmetic (`launch.stragglers`): each rank's step split into data wait,
compute and time blocked, the window's medians, and the rank named when its own time exceeds the
others' by the ratio, once, until the set changes."""

import pytest

from launch.stragglers import StragglerWatch, find_stragglers
from orchestrator.rundir.rows import parse_event


def test_a_rank_slower_than_the_others_by_the_ratio_is_named_and_one_within_it_is_not():
    fast, slow = [0.01, 0.05, 0.20], [0.21, 0.05, 0.0]
    assert find_stragglers([fast, slow, fast, fast], 1.5) == [1]
    assert find_stragglers([fast, [0.03, 0.05, 0.18], fast], 1.5) == []  # 1.33x: within the ratio
    assert find_stragglers([slow], 1.5) == []  # one rank has no peers


def test_a_step_is_split_into_data_compute_and_time_blocked_and_a_window_gives_its_medians():
    watch = StragglerWatch(ratio=1.5, window=3)
    assert watch.add(data_s=0.1, forward_s=0.1, step_s=1.0) is None
    assert watch.add(data_s=0.1, forward_s=0.5, step_s=1.0) is None  # compute capped by the step: 0.9, nothing blocked
    medians = watch.add(data_s=0.3, forward_s=0.1, step_s=1.0)
    assert medians == pytest.approx([0.1, 0.3, 0.4])  # compute = 3 x forward (forward + backward), each the median
    assert watch.add(data_s=0.1, forward_s=0.1, step_s=1.0) is None  # a new window


def test_the_event_comes_when_the_set_of_stragglers_changes_and_says_who_and_why():
    watch = StragglerWatch(ratio=1.5, window=2)
    fast, slow = [0.01, 0.05, 0.20], [0.21, 0.05, 0.0]
    event = watch.verdict(40, [fast, slow])
    assert event.ranks == [1] and event.step == 40
    assert "rank 1 (4.3x the others' own time per step: data 0.210 s, compute 0.050 s)" in event.describe()
    assert parse_event(event.line()) == event.model_copy(update={"time": None})
    assert watch.verdict(60, [fast, slow]) is None  # still the same straggler: said once
    caught_up = watch.verdict(80, [fast, fast])
    assert caught_up.ranks == [] and "none any more" in caught_up.describe()
