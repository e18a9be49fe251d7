"""The plan's time and energy forecast: measured by earlier runs of the same shape on the same
hardware when there are any (the calibration store a completed run adds to), else assumed and
given as a range that says so; and for Slurm CPU nodes, a forecast that says what it assumes."""

import dataclasses
import json

import pytest

from orchestrator.plan.calibration import Calibrations, Measured, read_calibrations, record_run
from orchestrator.plan.estimate import ASSUMED_MFU
from orchestrator.plan.planner import make_plan
from orchestrator.plan.render import render_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import write_plan
from orchestrator.slurm.submit import cluster_env
from tests.helpers.planning import H100, make_env
from tests.helpers.project import TINY


def plan_for(tmp_path, overrides=(), calibrations=Calibrations(), env=None):
    return make_plan(load_recipe(TINY, list(overrides)), env or make_env(tmp_path), calibrations=calibrations)


def finished_run(tmp_path, plan, tokens_per_s=5000.0, wall_s=70.0, kwh=0.0002, restarts=0, steps=None, coverage=1.0):
    """A completed run's directory as the ranks leave it: the plan, a row per step (the first
    warming up), and the summary with its bill."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    write_plan(run, plan.record())
    steps, per_step = steps or plan.recipe.train.steps, plan.batch.tokens_per_step
    step_s = per_step / tokens_per_s
    run.metrics.write_text("".join(json.dumps({"step": i, "step_s": step_s * (5 if i == 1 else 1)}) + "\n" for i in range(1, steps + 1)))
    run.write_json(run.summary, {"status": "completed", "steps": steps, "tokens": steps * per_step, "tokens_per_s": tokens_per_s,
                                 "mfu": 0.5, "wall_s": wall_s, "restarts": restarts,
                                 "energy": {"kwh": kwh, "coverage": coverage}})
    return run.path


def test_without_earlier_runs_the_forecast_is_an_assumption_with_its_range(tmp_path):
    plan = plan_for(tmp_path)
    e, low, assumed, high = plan.time, *ASSUMED_MFU["cpu"]
    assert e.assumed_mfu == assumed and e.basis.startswith("assumed") and "no earlier run" in e.basis
    fastest, slowest = e.wall_s_range
    assert fastest == pytest.approx(e.wall_s * assumed / high) and slowest == pytest.approx(e.wall_s * assumed / low)
    forecast = plan.energy.forecast
    assert forecast.kwh_range == pytest.approx((forecast.kwh * fastest / e.wall_s, forecast.kwh * slowest / e.wall_s))
    text = render_plan(plan)
    assert "(likely 0h" in text and "no earlier run of this shape" in text


def test_a_completed_run_calibrates_the_next_plan_of_its_shape(tmp_path):
    """Its utilisation of the peak its plan measured, the time beyond its steps, and its billed power."""
    first = plan_for(tmp_path)
    tokens = first.recipe.train.steps * first.batch.tokens_per_step
    store = tmp_path / "cache"
    assert record_run(finished_run(tmp_path, first, tokens_per_s=5000.0, wall_s=tokens / 5000.0 * 1.2, kwh=0.0002), store)
    # The same recipe with another learning rate: the same measurements apply, the time around the steps too.
    again = plan_for(tmp_path, ["train.optimizer.lr=0.001"], read_calibrations(store))
    assert again.time.tokens_per_s == pytest.approx(5000.0)
    assert again.time.wall_s == pytest.approx(tokens / 5000.0 * 1.2)
    assert again.time.basis.startswith("measured") and str(tmp_path / "run") in again.time.basis
    assert again.time.assumed_mfu == 0  # nothing assumed
    watts = 0.0002 * 3.6e6 / (tokens / 5000.0 * 1.2)  # per node: one node
    assert again.energy.forecast.power_per_device_w == pytest.approx(watts)
    assert again.energy.forecast.kwh == pytest.approx(0.0002)
    assert "billed power of earlier runs" in render_plan(again)
    # Twice the steps: the steps' time is measured, the time around them is not (another schedule).
    longer = plan_for(tmp_path, ["train.steps=300"], read_calibrations(store))
    assert longer.time.wall_s == pytest.approx(2 * tokens / 5000.0) and "steps alone" in longer.time.basis


def test_a_calibrated_forecast_is_the_measured_throughput_whatever_the_probe_says(tmp_path):
    """A tenth of a second of matmuls follows the moment's load, not the run's: the measurement wins,
    and it stands where no peak was measured at all (`orch validate`)."""
    store = tmp_path / "cache"
    record_run(finished_run(tmp_path, plan_for(tmp_path), tokens_per_s=5000.0), store)
    for flops in (50e9, 0.0):
        env = dataclasses.replace(make_env(tmp_path), cpu_matmul_flops=flops)
        assert plan_for(tmp_path, calibrations=read_calibrations(store), env=env).time.tokens_per_s == pytest.approx(5000.0)


@pytest.mark.parametrize("other", [
    {"overrides": ["model.hidden_size=256"]},
    {"overrides": ["train.micro_batch_size=4"]},
    {"overrides": ["distributed.zero_stage=3"]},
    {"overrides": ["distributed.procs_per_node=1"]},
    {"env": {"cpu_count": 8}},
], ids=["model", "micro-batch", "zero-stage", "topology", "machine"])
def test_runs_of_another_shape_or_machine_do_not_calibrate(tmp_path, other):
    store = tmp_path / "cache"
    record_run(finished_run(tmp_path, plan_for(tmp_path)), store)
    plan = plan_for(tmp_path, other.get("overrides", ()), read_calibrations(store), make_env(tmp_path, **other.get("env", {})))
    assert plan.time.basis.startswith("assumed")


def test_the_median_of_the_newest_runs_counts_and_a_run_recorded_twice_once(tmp_path):
    plan = plan_for(tmp_path)
    shape, schedule = plan.time.calibration_key.split("-")
    runs = [Measured(shape, schedule, f"/runs/{i}", time=float(i), tokens_per_s=rate, wall_per_step_time=1.0, power_per_device_w=None)
            for i, rate in enumerate([100.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0])]
    repeated = dataclasses.replace(runs[-1], time=9.0)  # the newest run recorded again (run again once complete)
    calibration = Calibrations((*runs, repeated)).lookup(plan.time.calibration_key)
    assert calibration.runs == 5 and calibration.tokens_per_s == 3000.0  # the oldest (100 tokens/s) left out
    assert calibration.tokens_per_s_range == (1000.0, 5000.0)
    again = make_plan(load_recipe(TINY), make_env(tmp_path), calibrations=Calibrations((*runs, repeated)))
    assert "(1,000-5,000 tokens/s)" in again.time.basis and again.time.wall_s_range[0] < again.time.wall_s < again.time.wall_s_range[1]


@pytest.mark.parametrize("why", ["dry run", "short", "resumed", "not completed"])
def test_runs_that_measure_nothing_reusable_are_not_recorded(tmp_path, why):
    loaded = load_recipe(TINY)
    plan = make_plan(loaded, make_env(tmp_path), dry_run=why == "dry run")
    run = finished_run(tmp_path, plan, restarts=1 if why == "resumed" else 0, steps=10 if why == "short" else None)
    if why == "not completed":
        RunDir(run).summary.unlink()
    assert record_run(run, tmp_path / "cache") is None
    assert read_calibrations(tmp_path / "cache") == Calibrations()


def test_a_damaged_store_line_is_skipped(tmp_path):
    store = tmp_path / "cache"
    record_run(finished_run(tmp_path, plan_for(tmp_path)), store)
    with (store / "calibration.jsonl").open("a") as handle:
        handle.write('{"key": "cut sh')
    assert len(read_calibrations(store).measured) == 1


def test_slurm_cpu_nodes_are_forecast_from_this_machines_cores_and_say_so(tmp_path):
    from orchestrator.plan.load import _slurm_nodes

    loaded = load_recipe(TINY, ["slurm.cpus_per_task=8"])
    here = make_env(tmp_path)  # 2 cores, 100 GFLOP/s in all
    nodes = _slurm_nodes(here, loaded.recipe.slurm)
    plan = make_plan(loaded, nodes)
    assert plan.time.peak_flops_per_device == pytest.approx(100e9 / 2 * 8 / 2)  # 8 cores per node, 2 ranks
    assert plan.time.wall_s > 0 and plan.energy.forecast.kwh > 0
    assert "not known before a job runs on them" in plan.time.basis
    # Nodes with this machine's core count are still not this machine: its runs do not calibrate them.
    same_cores = load_recipe(TINY, ["slurm.cpus_per_task=2"])
    local, slurm = make_plan(same_cores, here), make_plan(same_cores, _slurm_nodes(here, same_cores.recipe.slurm))
    assert local.time.calibration_key != slurm.time.calibration_key


def test_without_a_peak_the_plan_says_why_there_is_no_forecast(tmp_path):
    plan = plan_for(tmp_path, env=dataclasses.replace(make_env(tmp_path), cpu_matmul_flops=0.0))
    assert plan.time.wall_s == 0 and plan.time.basis.startswith("none: ")
    assert plan.energy.forecast.kwh is None and "no time estimate" in plan.energy.forecast.basis
    text = render_plan(plan)
    assert "0 tokens/s" not in text and "estimate       none: no peak FLOP/s known" in text


def test_gpu_plans_use_the_datasheet_peak_and_their_range(tmp_path):
    plan = plan_for(tmp_path, ["distributed.procs_per_node=1", "train.global_batch_size=8", "train.precision=bf16"],
                    env=make_env(tmp_path, gpus=(H100,)))
    assert plan.time.peak_flops_per_device == 989e12 and plan.time.assumed_mfu == ASSUMED_MFU["cuda"][1]
    assert "datasheet peak" in plan.time.basis
    assert json.loads(plan.files()["plan.json"])["estimate"]["wall_s_range"][0] < plan.time.wall_s


def test_the_cpu_energy_forecast_counts_the_memory_the_meter_bills(tmp_path):
    """The CPU meter bills the whole machine's memory in use, so the forecast counts what is in use now too."""
    idle = plan_for(tmp_path).energy.forecast
    busy = plan_for(tmp_path, env=dataclasses.replace(make_env(tmp_path), memory_in_use_bytes=8 * 2**30)).energy.forecast
    assert busy.power_per_device_w - idle.power_per_device_w == pytest.approx(8 * 0.375)
    assert "GiB in use with this run's" in busy.basis


def test_slow_steps_count_at_their_time_not_at_the_median(tmp_path):
    """On a busy machine a few slow steps take much of a run's time: the mean step is what it measures."""
    plan = plan_for(tmp_path)
    run = RunDir(finished_run(tmp_path, plan, tokens_per_s=5000.0))
    rows = run.metric_rows()
    for row in rows[1::3]:
        row["step_s"] *= 4
    run.metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    record_run(run.path, tmp_path / "cache")
    mean_step_s = sum(row["step_s"] for row in rows[1:]) / len(rows[1:])
    again = plan_for(tmp_path, calibrations=read_calibrations(tmp_path / "cache"))
    assert again.time.tokens_per_s == pytest.approx(plan.batch.tokens_per_step / mean_step_s)


def test_an_estimated_bill_does_not_calibrate_the_power(tmp_path):
    """Without energy counters the bill is the forecast's own model at another moment's load and memory."""
    store = tmp_path / "cache"
    record_run(finished_run(tmp_path, plan_for(tmp_path), kwh=0.0002, coverage=0.0), store)
    again = plan_for(tmp_path, calibrations=read_calibrations(store))
    assert again.time.basis.startswith("measured") and again.energy.forecast.basis.startswith("per node: CPU at full load")
