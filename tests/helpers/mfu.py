"""The MFU a run reports, recomputed from its run directory: the plan's FLOPs per token and tokens per
step, each attempt's peak per device and world size (its `start` event), each row's measured step time.

    mfu = tokens_per_step x flops_per_token / (step_s x peak_flops_per_device x world_size)
    flops_per_token = 6 x parameters (4 x for frozen ones; none for the input embedding, a lookup)
                      + 12 x layers x hidden x sequence

Called on the run directories of real runs that the distributed tests start anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.shared.model.architectures import lookup_params
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan
from orchestrator.rundir.checkpoint_records import read_summary


def assert_mfu_matches_plan(run_dir: Path) -> None:
    run = RunDir(run_dir)
    plan = read_plan(run)
    batch, estimate, sizes = plan.batch, plan.estimate, plan.model.sizes
    # The plan's own figures are the ones its docstrings promise: torchtitan's and Megatron-LM's count,
    # and every accumulation micro-batch of every data-parallel rank in a step.
    # An untied input embedding is a lookup: no FLOPs. A frozen weight (LoRA's base, lookups included)
    # takes no weight gradient: 4 FLOPs per token, not 6.
    lookups = lookup_params(plan.model.arch, sizes)
    dense = 6 * (plan.model.num_params - lookups) - 2 * max(plan.model.frozen_params - lookups, 0)
    assert estimate.flops_per_token == dense + 12 * sizes.num_layers * sizes.hidden_size * batch.seq_len
    assert batch.tokens_per_step == batch.micro_batch_size * batch.gradient_accumulation_steps * batch.data_parallel * batch.seq_len
    starts = [e for e in run.history() if e["event"] == "start"]
    rows = run.metric_rows()
    assert rows and starts
    for row in rows:
        # Logged by the latest attempt that started before this step (a later resume rewrites the rows after its checkpoint).
        attempt = [s for s in starts if s["step"] < row["step"]][-1]
        peak = attempt["peak_flops_per_device"]
        if plan.topology.device == "cpu":
            assert peak > 0, attempt  # measured by the ranks at start
        else:
            assert peak == estimate.peak_flops_per_device, attempt  # the datasheet peak the plan used
        expected = batch.tokens_per_step * estimate.flops_per_token / (row["step_s"] * peak * attempt["world_size"])
        assert row["mfu"] == pytest.approx(expected, rel=1e-9), (row, attempt)
        assert row["tokens_per_s"] == pytest.approx(batch.tokens_per_step / row["step_s"], rel=1e-9), row
        assert row["tokens"] == row["step"] * batch.tokens_per_step, row
    if run.summary.exists():
        summary = read_summary(run)
        assert summary.mfu == pytest.approx(float(np.median([r["mfu"] for r in rows[1:]] or [0.0])), rel=1e-12)
