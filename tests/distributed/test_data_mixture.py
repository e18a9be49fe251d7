"""A weighted mixture of two sources through real runs: 3:1 of the samples per step within binomial
tolerance, and the same samples per step through a SIGKILL and a resume at another world size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from orchestrator.shared.data.stream import ShardedStream
from tests.helpers.processes import kill_run, orch, start_orch, wait_for_rows
from tests.helpers.project import FAST
from tests.helpers.pii import builtin_documents

pytestmark = pytest.mark.distributed

STEPS = 60


def test_three_to_one_holds_per_step_and_survives_a_kill_and_another_world_size(tmp_path):
    documents = builtin_documents(1_500_000)
    half = len(documents) // 2
    for name, part in (("code", documents[:half]), ("more", documents[half:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
    mixture = ["data.builtin=null", "data.max_bytes=null",
               f'data.sources=[{{path: {tmp_path / "code.jsonl"}, weight: 3}}, {{path: {tmp_path / "more.jsonl"}, weight: 1}}]']
    args = ["recipes/tiny-pretrain.yaml", *FAST, *mixture, f"train.steps={STEPS}", "checkpoint.interval_steps=10", "--run-dir", str(tmp_path / "run")]
    run_dir = tmp_path / "run"
    first = start_orch("run", *args)
    wait_for_rows(first, run_dir, 20)
    kill_run(run_dir)
    first.wait()
    resumed = orch("run", *args, "distributed.procs_per_node=1")  # the same global batch on one rank
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert any(e["event"] == "elastic_resume" for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()))
    data = json.loads((run_dir / "data.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    seq_len, batch = plan["batch"]["seq_len"], plan["batch"]["global_batch_size"]
    # What the stream's definition says each step holds: the rows of both attempts and world sizes must match it.
    seed = yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["seed"]
    expected = ShardedStream([s["train_tokens"] // seq_len for s in data["sources"]], batch, 1, 1, 0, seed=seed, weights=[3.0, 1.0])
    for row in rows:
        expected.step_indices()
        assert [row["samples/code"], row["samples/more"]] == expected.last_step_sources(), row
    code = sum(r["samples/code"] for r in rows) / (STEPS * batch)
    assert abs(code - 0.75) <= 3 * np.sqrt(0.75 * 0.25 / (STEPS * batch)), code
