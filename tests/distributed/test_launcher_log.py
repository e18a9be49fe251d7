"""The node launcher's log of a local run (`logs/launcher.log`) says what the launcher did: which ranks
it started, with their pids and how, how each ended, and its own exit code; no log is left empty.
Read from `make demo`'s run (the session's `demo`), so it costs no training of its own."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.distributed

LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d launch\.node: "


def test_the_launcher_log_says_which_ranks_it_started_and_how_they_ended(demo):
    logs = demo / "run" / "logs"
    assert {p.name for p in logs.iterdir()} == {"launcher.log", "rank-0.log", "rank-1.log"}
    assert all(p.stat().st_size > 0 for p in logs.iterdir())
    lines = (logs / "launcher.log").read_text().splitlines()
    assert all(re.match(LINE, line) for line in lines), lines
    said = [re.sub(LINE, "", line) for line in lines]
    assert re.fullmatch(r"node 0 of 1 \(deepspeed, 2 rank\(s\) here\), rendezvous 127\.0\.0\.1:\d+", said[0]), said
    started = re.fullmatch(r"started rank 0 \(pid (\d+)\), rank 1 \(pid (\d+)\), forked from this launcher after it imported deepspeed's libraries", said[1])
    assert started, said
    assert sorted(said[2:4]) == [f"rank 0 (pid {started[1]}) finished", f"rank 1 (pid {started[2]}) finished"]
    assert said[4:] == ["node 0 exits 0"]
