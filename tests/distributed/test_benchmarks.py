"""Every benchmark under bench/ runs as a user starts it, in its smoke mode (`--smoke`: a few steps, one
repeat, the smallest sizes, every part), and writes its whole result: so that none stops working
unnoticed, as bench/throughput.py did when the prepared data's format changed. A smoke run's figures
mean nothing; these tests check the result's shape and that its numbers are sane. bench/slurm.py needs
the Slurm cluster: tests/integration/test_benchmark_slurm.py. bench/disk.py is a part of
bench/checkpoint.py (its raw-disk figures), and bench/gpu.py needs a GPU (tests/unit/test_gpu_check.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import recipe_yaml, write_data
from orchestrator.shared.data.prepared import PreparedData, parse_manifest
from tests.helpers.planning import write_plan
from tests.helpers.project import ROOT, TINY

pytestmark = pytest.mark.distributed


def run_bench(name: str, out_dir: Path, *args: str, env: dict | None = None) -> tuple[dict, str]:
    """`python bench/NAME.py --smoke ARGS --out ...` from the repository root: its result and its output."""
    out = out_dir / f"{name}.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", *args, "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"bench/{name}.py exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
    return json.loads(out.read_text()), result.stdout


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_throughput_against_bare_deepspeed_reads_the_prepared_data_and_the_venvs_op(tmp_path):
    # A home of its own: a bare side that compiled DeepSpeed's CPU op afresh would build it under
    # ~/.cache/torch_extensions, where the ranks of `orch run` never look.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME")} | {"HOME": str(home)}
    result, printed = run_bench("throughput", tmp_path, env=env)
    for side in ("orchestrator", "bare_deepspeed"):
        assert positive(result[side]["tokens_per_s"]) and 0 < result[side]["mfu"] < 1, result[side]
        assert all(math.isfinite(loss) for loss in result[side]["final_loss_per_run"])
    assert positive(result["ratio_orch_over_bare"]) and positive(result["peak"]["peak_flops"])
    assert result["config"]["smoke"] and result["config"]["steps"] == 3
    assert "orchestrator / bare:" in printed
    assert not (home / ".cache" / "torch_extensions").exists(), "the bare side compiled DeepSpeed's CPU op afresh"


def test_a_failing_rank_shows_its_own_log(tmp_path):
    """Its traceback, not torchrun's summary of it, and read before the scratch directory goes: here the
    bare side is pointed at a run directory whose prepared data is gone."""
    run_dir = tmp_path / "run"
    write_plan(run_dir, topology={"nodes": 1, "procs_per_node": 1, "device": "cpu", "comm_backend": "gloo"})
    run = RunDir(run_dir)
    run.write_file(run.recipe.name, recipe_yaml(load_recipe(TINY).recipe))
    source = {"name": "text", "weight": 1.0, "documents": {}, "train_tokens": 1, "val_tokens": 0, "curation": {},
              "shards": {"train": ["train-00000"], "val": []}}
    write_data(run, PreparedData(tmp_path / "gone", parse_manifest({"vocab_size": 8, "train_tokens": 1, "val_tokens": 0, "sources": [source]})))
    bare = f"from pathlib import Path; import throughput; throughput.run_bare(Path({str(run_dir)!r}), 1, Path({str(tmp_path / 'bare')!r}))"
    result = subprocess.run([sys.executable, "-c", bare], cwd=ROOT / "bench", capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "stderr.log" in result.stderr and "FileNotFoundError" in result.stderr.split("stderr.log")[-1], result.stderr[-4000:]


def test_backends(tmp_path):
    result, printed = run_bench("backends", tmp_path)
    assert set(result["tokens_per_s"]) == {"horovod", "zero0"}
    assert all(positive(v) for v in result["tokens_per_s"].values())
    assert result["ratio_to_zero0"]["zero0"] == 1.0 and positive(result["ratio_to_zero0"]["horovod"])
    assert all(math.isfinite(loss) for loss in result["final_loss"].values())
    assert "horovod" in printed


def test_energy_monitor_overhead(tmp_path):
    result, _ = run_bench("energy", tmp_path)
    assert set(result["tokens_per_s"]) == {"off", "on-0.1s"} and all(positive(v) for v in result["tokens_per_s"].values())
    assert math.isfinite(result["overhead_end_to_end"]["on-0.1s"])
    assert positive(result["sample_cost_ms"]) and 0 < result["core_share_at_1s"] < 1


def test_checkpoint_stall_commit_and_resume(tmp_path):
    result, printed = run_bench("checkpoint", tmp_path)
    for mode in ("async", "sync"):
        assert result["stall"][mode]["saves"] == 2 and positive(result["stall"][mode]["blocked_s"])
    assert set(result["write"]) == {"async_periodic", "async_final", "sync_periodic", "sync_final"}
    assert all(positive(w["commit_gb_per_s"]) for w in result["write"].values())
    assert positive(result["raw_disk_gb_per_s"]["write_fsync_s"])  # bench/disk.py
    assert all(positive(result["throughput"][f"{mode}_over_none"]) for mode in ("async", "sync"))
    resume = result["resume"]
    assert 0 < resume["to_resumed_event_s"] <= resume["to_first_resumed_step_s"] and resume["recomputed_steps"] >= 0
    assert "resume from step-" in printed


def test_checkpoint_goodput_under_failures(tmp_path):
    result, _ = run_bench("checkpoint", tmp_path, "--failures")
    assert result["young_daly_interval_steps"] >= 1 and positive(result["baseline"]["step_s"])
    [run] = result["runs"]
    assert len(run["restarts"]) >= 1 and all(positive(r["restart_cost_s"]) for r in run["restarts"])
    assert 0 < run["measured"]["goodput"] <= 1 and positive(run["measured_over_expected_goodput_over_this_run"])


def test_fault_campaign_recovers_every_kind_bit_exact(tmp_path):
    """One kind (a hang) and the goodput run's crashes keep the script from rotting within the suite's
    time; every kind is recovered bit-exact by tests/distributed/test_in_job_restart.py and
    test_loss_rollback.py."""
    result, printed = run_bench("faults", tmp_path, "--kinds", "hang")
    (hang,) = result["kinds"].values()
    assert (hang["runs"], hang["recovered"], hang["bit_exact"]) == (1, 1, 1), hang["details"]
    assert positive(hang["first_new_step_s"]["median"]) and hang["detected_s"]["median"] <= hang["first_new_step_s"]["median"]
    assert hang["failure_classes"] == ["hang"]
    goodput = result["goodput"]
    assert goodput["run"]["recovered"] and goodput["run"]["bit_exact"] and len(goodput["run"]["recoveries"]) >= 1
    assert 0 < goodput["run"]["goodput"] <= 1 and positive(goodput["young_daly"]["restart_cost_s"])
    assert "hang" in printed and "goodput measured" in printed


def test_data_preparation(tmp_path):
    result, _ = run_bench("data", tmp_path)
    assert [(row["corpus"], row["workers"]) for row in result["rows"]] == [("S", 1), ("S", 2), ("4S", 1), ("4S", 2)]
    assert all(positive(row["tokens_per_s"]) and positive(row["peak_rss_mib"]) for row in result["rows"])
    summary = result["summary"]
    assert positive(summary["encode_batch_tokens_per_s"]) and positive(summary["curated_S_2_workers"]["seconds"])
    assert all(positive(v) for v in summary["peak_memory_4S_over_S"].values())
    large = summary["large_documents_S"]  # the same text in documents longer than a piece
    assert all(positive(large[run]["peak_rss_mib"]) and positive(large[run]["peak_over_small_documents"]) for run in ("pipeline_1_worker", "curated_2_workers"))


def test_scale(tmp_path):
    result, _ = run_bench("scale", tmp_path)
    assert result["largest_trained"] == "0.001"
    assert [run["variant"] for run in result["runs"]] == ["partitioned + checkpointing", "whole-model construction",
                                                          "no activation checkpointing"]
    for run in result["runs"]:
        assert run["trained"], run.get("log_tail")
        assert positive(run["num_params"]) and positive(run["step_peak_bytes"]) and positive(run["startup_growth_bytes"])
        assert {"construction", "setup", "forward_backward", "optimizer_step", "fingerprint"} <= set(run["phase_peak_bytes"])
        assert positive(run["planned_over_step_peak"])


def test_remote_checkpoint(tmp_path):
    """Against moto's S3 server on loopback, which the bench starts and stops itself."""
    result, printed = run_bench("remote_checkpoint", tmp_path)
    assert set(result["stall_per_save_s"]) == {"local", "remote"} and all(positive(v) for v in result["stall_per_save_s"].values())
    local, remote = result["runs"]["local"], result["runs"]["remote"]
    assert not any(run["uploads"] for run in local) and all(run["uploads"] and not run["upload_failures"] for run in remote)
    assert positive(result["throughput"]["ratio"])
    resume = result["resume_from_empty_machine"]
    assert 0 < resume["checkpoint_fetched_s"] <= resume["resumed_event_s"] <= resume["first_step_s"]
    assert "stall per save" in printed


def test_sweep_overhead(tmp_path):
    result, _ = run_bench("sweep", tmp_path)
    for pruning in ("none", "median"):
        assert result[pruning]["states"] == {"0": "complete"} and result[pruning]["steps"] == 4 and result[pruning]["best"] == "0"
    assert result["alone"]["runs"] == 1 and positive(result["summary"]["overhead_sweep_over_trials_alone"])
