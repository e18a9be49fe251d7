"""A straggler is named: rank 1 waits 0.2 s for every batch from step 3 (`ORCH_INJECT_FAULTS=slow@3:rank1`,
as a slow data path would make it), every step of both ranks waits for it, and the report names
rank 1, not rank 0, by its own data wait; `orch status` says so. One window of five steps: the verdict of a later one depends on how busy the
machine is."""

import pytest

from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.recovery_events import Straggler
from tests.helpers.processes import orch
from tests.helpers.project import FAST

pytestmark = pytest.mark.distributed


def test_a_rank_slow_to_fetch_its_batches_is_named_a_straggler(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_INJECT_FAULTS", "slow@3:rank1")
    run_dir = tmp_path / "run"
    result = orch("run", "recipes/tiny-pretrain.yaml", *FAST, "train.steps=6", "fault_tolerance.straggler_window_steps=5",
                  "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = [e for e in RunDir(run_dir).history() if isinstance(e, Straggler)]
    assert report.ranks == [1] and report.step == 5  # the first window: steps 1-5, of which 3-5 slow on rank 1: its median
    (data0, _, blocked0), (data1, _, _) = report.per_rank
    assert data1 >= 0.2 > data0 and blocked0 > 0.1  # rank 0 waited for it in the collectives
    status = orch("status", str(run_dir))
    assert "straggler at step 5: rank 1 (" in status.stdout and "data 0.2" in status.stdout, status.stdout
