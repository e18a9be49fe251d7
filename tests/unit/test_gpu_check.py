"""The GPU check's readers (`bench/gpu.py`) on a run directory written by the project's own writers: the
metric rows and events rank 0 appends, the energy records a rank's monitor writes, a gate report, the data
record; and the bundle's wheel list (`bench/gpu_bundle.py`), which must leave CUDA and torch to the GPU machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launch.energy.monitor import EnergyMonitor
from orchestrator.shared.energy.bill import J_PER_KWH
from orchestrator.gates.outcome import GateReport
from orchestrator.gates.result import GateResult
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan, write_data
from orchestrator.shared.data.prepared import PreparedData, parse_manifest
from orchestrator.rundir.rows import EngineBuilt
from tests.helpers.planning import write_plan
from tests.helpers.project import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # bench/ holds scripts that import each other by bare name, not a package
import gpu  # noqa: E402
import gpu_bundle  # noqa: E402

sys.path.remove(str(ROOT / "bench"))  # the other tests keep their own path

T0 = 1_000_000.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self) -> float:
        return self.now


class SteadyMeter:
    """A device drawing constant power on the fake clock, with the method a real meter would report."""

    def __init__(self, device: str, kind: str, method: str, watts: float, clock: Clock):
        self.device, self.kind, self.method, self.detail = device, kind, method, "test"
        self.watts, self.clock, self.last = watts, clock, clock.now

    def read_j(self) -> float:
        joules, self.last = (self.clock.now - self.last) * self.watts, self.clock.now
        return joules


def short_run(tmp_path, steps: int = 5) -> RunDir:
    """A finished run's plan and metric rows: tokens/s and MFU rising over the first steps, then steady."""
    run = RunDir(tmp_path / "run")
    write_plan(run.path)
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 10.0 - step, "lr": 1e-4, "tokens": 100 * step, "tokens_per_s": 1000.0 * min(step, 4),
               "mfu": 0.1 * min(step, 4), "step_s": 1.0 / min(step, 4)}
        events.append_row(run.metrics, {**row, "val_loss": 5.5} if step == steps else row)
    return run


def test_throughput_is_the_median_after_warmup_against_the_plans_peak(tmp_path):
    run = short_run(tmp_path)
    summary = gpu.throughput(run, warmup_steps=2)
    assert summary["steps"] == 5 and summary["tokens_per_s"] == 4000.0 and summary["mfu"] == pytest.approx(0.4)
    assert summary["step_s"] == 0.25 and (summary["first_loss"], summary["final_loss"], summary["val_loss"]) == (9.0, 5.0, 5.5)
    assert summary["peak_tflops"] == pytest.approx(read_plan(run).estimate.peak_flops_per_device / 1e12)
    line = gpu.describe(gpu.StepRecord("bf16", True, 1.0, summary))
    assert "5 steps, 4,000 tokens/s, MFU 40.0% of" in line and "loss 9.000 -> 5.000" in line


def test_energy_summary_is_the_bill_with_each_gpu_figures_method(tmp_path):
    run = short_run(tmp_path)
    clock = Clock()
    meters = [SteadyMeter("gpu:GPU-test", "gpu", "counter", 300.0, clock), SteadyMeter("cpu", "cpu", "estimated", 50.0, clock)]
    monitor = EnergyMonitor(meters, run.path, "node-a", 0, 1.0, clock=clock)
    clock.now = T0 + 2
    monitor.phase("train", 1)
    clock.now = T0 + 10
    monitor.flush()
    summary = gpu.energy_summary(run)
    assert summary["gpu_methods"] == ["counter"]
    assert summary["gpu_kwh"] == pytest.approx(3000.0 / J_PER_KWH) and summary["kwh"] == pytest.approx(3500.0 / J_PER_KWH)
    assert summary["measured_kwh"] == pytest.approx(3000.0 / J_PER_KWH) and summary["estimated_kwh"] == pytest.approx(500.0 / J_PER_KWH)
    assert summary["coverage"] == pytest.approx(0.5)  # one of two devices, over the same seconds, has a counter
    assert {(d["device"], d["method"]) for d in summary["devices"]} == {("gpu:GPU-test", "counter"), ("cpu", "estimated")}


def test_gate_summary_reads_the_newest_report(tmp_path):
    run = short_run(tmp_path)
    results = [GateResult("quality", "pass", 5.5, None, "val loss"), GateResult("health", "fail", 1.0, 0.0, "a spike"),
               GateResult("bias", "skipped", None, None, "no pairs")]
    GateReport.judge(results, {"quality", "health"}, checkpoint="step-00000005", step=5, checkpoint_hash="c" * 64,
                     recipe_hash="r" * 16, evaluated_at=T0).write(run)
    summary = gpu.gate_summary(run)
    assert summary == {"checkpoint": "step-00000005", "passed": False, "verdict": "failed: health",
                       "gates": {"quality": "pass", "health": "fail", "bias": "skipped"}}


def test_startup_memory_comes_from_the_engine_built_event_when_there_is_one(tmp_path):
    run = short_run(tmp_path)
    assert gpu.startup_memory(run) is None
    gib = 2**30
    # as launch.rank logs it: one event, each figure a list indexed by rank
    events.append(run.events, EngineBuilt(rss_before_bytes=[2 * gib, 2 * gib], construction_peak_bytes=[3 * gib, 4 * gib],
                                           peak_rss_bytes=[5 * gib, 4 * gib]))
    assert gpu.startup_memory(run) == [{"rank": 0, "rss_before_gib": 2.0, "construction_peak_gib": 3.0, "peak_rss_gib": 5.0},
                                       {"rank": 1, "rss_before_gib": 2.0, "construction_peak_gib": 4.0, "peak_rss_gib": 4.0}]
    line = gpu.describe(gpu.StepRecord("zero3", True, 1.0, {"startup_memory": gpu.startup_memory(run)}))
    assert line.startswith("start-up memory rank 0: rss_before 2.00 GiB, construction_peak 3.00 GiB, peak_rss 5.00 GiB; rank 1:")


def test_data_origin_says_whether_the_run_used_the_carried_data(tmp_path):
    run = short_run(tmp_path)
    write_data(run, PreparedData(tmp_path / "cache" / "data" / "b9a7d99a35063b93", parse_manifest({"vocab_size": 32000, "train_tokens": 10, "val_tokens": 2})))
    assert gpu.data_origin(run, {"b9a7d99a35063b93"}) == "carried"
    assert gpu.data_origin(run, {"0123456789abcdef"}).startswith("prepared on this machine")


def test_the_bundle_carries_the_projects_needs_but_not_torch_cuda_or_the_left_out():
    pins = gpu_bundle.closure(gpu_bundle.Target())
    assert {"deepspeed", "datasets", "pydantic", "pydantic-core", "codecarbon"} <= set(pins)
    assert not {name for name in pins if gpu_bundle.PROVIDED.match(name)}
    assert "torch" not in pins and "transformers" not in pins and "wandb" not in pins
    assert not set(pins) & set(gpu_bundle.LEFT_OUT)


def test_a_wheel_fits_the_target_by_its_tags_so_a_c_extension_built_here_does_not_fit_the_gpu_machine():
    gpu, here = gpu_bundle.Target("3.12.3"), gpu_bundle.Target("3.11.7")
    pure, built_here = Path("rouge_score-0.1.2-py3-none-any.whl"), Path("fast-1.0-cp311-cp311-linux_x86_64.whl")
    for_gpu = Path("scipy-1.17.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl")
    abi3 = Path("cryptography-51.0.1-cp311-abi3-manylinux_2_28_x86_64.whl")
    assert gpu.fits(pure) and here.fits(pure) and gpu.fits(abi3) and here.fits(abi3)
    assert gpu.fits(for_gpu) and not here.fits(for_gpu)
    assert here.fits(built_here) and not gpu.fits(built_here)  # built from an sdist with C extensions: for this Python only
    assert not gpu.fits(Path("x-1.0-cp312-cp312-macosx_11_0_arm64.whl"))
    assert gpu.markers()["python_version"] == "3.12" and gpu.markers()["python_full_version"] == "3.12.3"
    assert gpu.pip_flags()[:4] == ["--python-version", "3.12.3", "--implementation", "cp"]
