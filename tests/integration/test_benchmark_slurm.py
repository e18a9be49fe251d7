"""bench/slurm.py runs in its smoke mode (`--smoke`: one job to its first step, one preempted and
requeued, 6 steps each) on the local Slurm cluster, and writes its whole result; see
tests/distributed/test_benchmarks.py for the benchmarks that need no cluster."""

from __future__ import annotations

import pytest

from tests.distributed.test_benchmarks import positive, run_bench
from tests.integration.test_slurm_submit import cluster  # noqa: F401  (the module-scoped fixture that starts it)

pytestmark = pytest.mark.integration


def test_slurm_submit_and_requeue(tmp_path):
    result, printed = run_bench("slurm", tmp_path)
    [first] = result["submit_to_first_step"]["runs"]
    assert all(positive(first[key]) for key in ("submit_command_s", "queue_wait_s", "start_up_s", "total_s"))
    [requeue] = result["requeue"]["runs"]
    assert requeue["preempted_step"] >= requeue["signalled_at_step"] and requeue["recomputed_steps"] >= 0
    assert positive(requeue["requeue_delay_s"]) and positive(requeue["total_s"])
    assert "USR1 -> requeue -> first new step" in printed
