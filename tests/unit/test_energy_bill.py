"""Energy accounting: integration, meters, the bill's aggregation, carbon arithmetic, forecasts, budgets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from launch.energy.account import EnergyAccount
from orchestrator.shared.energy.bill import J_PER_KWH, make_bill
from orchestrator.energy.forecast import forecast_energy
from orchestrator.shared.energy.grid import Intensity, IntensityError, read_series, resolve_intensity
from orchestrator.shared.energy.hardware import CpuPower, cpu_load_power_w, cpu_power
from launch.energy.meters import CounterMeter, PowerIntegrator, gpu_meter, rank_meters, rapl_meters
from launch.energy.monitor import EnergyMonitor
from orchestrator.energy.spec import CarbonSpec, EnergySpec
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import EnergyRecord
from tests.helpers.planning import make_env


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- integration and counters --------------------------------------------------------------------


def test_power_samples_are_integrated_with_the_trapezoid_rule():
    clock = FakeClock(0.0)
    integrator = PowerIntegrator(clock)
    assert integrator.add(100.0) == 0.0
    clock.now = 1.0
    assert integrator.add(200.0) == pytest.approx(150.0)
    clock.now = 3.0
    assert integrator.add(200.0) == pytest.approx(400.0)


def test_a_wrapping_counter_still_yields_the_energy_since_the_last_read():
    values = iter([990_000.0, 10_000.0])
    meter = CounterMeter("cpu:rapl-0", "cpu", "RAPL package-0", lambda: next(values), 1e-6, wrap=1_000_000.0)
    assert meter.read_j() == pytest.approx(0.02)  # 10,000 uJ to the wrap, 10,000 after it


def _powercap(root: Path, zones: dict[str, tuple[str, int]]) -> Path:
    for zone, (name, energy_uj) in zones.items():
        (root / zone).mkdir(parents=True)
        (root / zone / "name").write_text(name + "\n")
        (root / zone / "energy_uj").write_text(f"{energy_uj}\n")
        (root / zone / "max_energy_range_uj").write_text("262143328850\n")
    return root


def test_rapl_packages_and_dram_become_counters(tmp_path):
    root = _powercap(tmp_path, {"intel-rapl:0": ("package-0", 1_000_000), "intel-rapl:0:0": ("core", 5), "intel-rapl:0:1": ("dram", 2_000_000)})
    meters, reason = rapl_meters(root)
    assert reason is None
    assert {(m.device, m.kind, m.method) for m in meters} == {("cpu:rapl-0", "cpu", "counter"), ("memory:rapl-0:1", "memory", "counter")}
    (root / "intel-rapl:0" / "energy_uj").write_text("4000000\n")
    cpu = next(m for m in meters if m.kind == "cpu")
    assert cpu.read_j() == pytest.approx(3.0)


def test_no_rapl_gives_estimates_that_say_why(tmp_path):
    meters, reason = rapl_meters(tmp_path / "absent")
    assert meters == [] and "RAPL not readable" in reason
    estimated = rank_meters(0, False, CpuPower(100.0, "test"), 0.375)
    assert [(m.kind, m.method) for m in estimated] == [("cpu", "estimated"), ("memory", "estimated")]
    assert all("RAPL not readable" in m.detail for m in estimated)
    assert rank_meters(1, False, CpuPower(100.0, "test"), 0.375) == []  # only the local leader owns the CPU


def test_load_curve_is_codecarbons():
    assert cpu_load_power_w(200.0, 0.0) == pytest.approx(20.0)
    assert cpu_load_power_w(200.0, 1.0) == pytest.approx(200.0)
    assert cpu_load_power_w(200.0, 0.5) == pytest.approx(200.0 * (0.1 + 0.9 * 0.125))


def test_cpu_tdp_from_codecarbons_table_and_its_default_for_unknown_models():
    known = cpu_power("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 160)
    assert known.tdp_w == 270.0 and "Platinum 8380" in known.source
    unknown = cpu_power("AMD EPYC", 2)
    assert unknown.tdp_w == 8.0 and "not in CodeCarbon's TDP table" in unknown.source
    assert cpu_power("anything", 2, override_w=95.0) == CpuPower(95.0, "energy.cpu_tdp_w in the recipe")


# -- GPUs through NVML (a fake with pynvml's interface: this machine has no GPU) --------------------


class FakeNvml:
    """pynvml's functions for two GPUs: the first has an energy counter that advances 30 J per read,
    the second only reports a steady 150 W, as pre-Volta GPUs do."""

    class NVMLError(Exception):
        """pynvml's base error."""

    class NVMLError_NotSupported(NVMLError):
        """Raised by pynvml for a query the GPU does not support."""

    def __init__(self):
        self.counter_mj = 0
        self.handles = ["GPU-aaaa", "GPU-bbbb"]

    def nvmlInit(self):
        """Nothing to initialise in the fake."""

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.handles[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return uuid

    def nvmlDeviceGetUUID(self, handle):
        return handle.encode()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if handle != "GPU-aaaa":
            raise self.NVMLError_NotSupported("Not Supported")
        self.counter_mj += 30_000
        return self.counter_mj

    def nvmlDeviceGetPowerUsage(self, handle):
        return 150_000


def test_gpu_meters_use_the_counter_where_there_is_one_else_integrate_power():
    nvml = FakeNvml()
    first, second = gpu_meter(nvml, 0, None), gpu_meter(nvml, 1, None)
    assert (first.device, first.method) == ("gpu:GPU-aaaa", "counter")
    assert (second.device, second.method) == ("gpu:GPU-bbbb", "integrated")
    assert first.read_j() == pytest.approx(30.0)
    assert gpu_meter(nvml, 0, "GPU-bbbb,GPU-aaaa").device == "gpu:GPU-bbbb"  # CUDA_VISIBLE_DEVICES decides


def test_a_gpu_without_nvml_is_missing_with_the_reason_not_zero():
    class Broken(FakeNvml):
        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")

    meter = gpu_meter(Broken(), 0, None)
    assert meter.method == "missing" and meter.read_j() is None and "Driver Not Loaded" in meter.detail


def test_a_two_gpu_node_reports_each_gpu_once_and_the_right_totals(tmp_path):
    nvml = FakeNvml()
    cpu = CpuPower(100.0, "test")
    monitors = [
        EnergyMonitor(rank_meters(local, True, cpu, 0.375, nvml_loader=lambda: nvml), tmp_path, "node-a", local, 0.05).start()
        for local in (0, 1)
    ]
    time.sleep(0.6)
    for monitor in monitors:
        monitor.close()
    reads = nvml.counter_mj // 30_000 - 1  # the first read is the meter's baseline
    records = json.loads(next((tmp_path / "energy/parts/node-a").glob("rank1-*.json")).read_text())
    seconds_b = records[0]["seconds"]
    bill = make_bill(_records(tmp_path), Intensity(100.0, "test"), 1.0, tokens=0, steps=0)
    devices = {d["device"]: d for d in bill["nodes"]["node-a"]["devices"]}
    assert set(devices) == {"gpu:GPU-aaaa", "gpu:GPU-bbbb", "cpu", "memory"}
    assert devices["gpu:GPU-aaaa"]["energy_j"] == pytest.approx(30.0 * reads)
    assert devices["gpu:GPU-bbbb"]["energy_j"] == pytest.approx(150.0 * seconds_b, rel=0.05)
    gpu_j = devices["gpu:GPU-aaaa"]["energy_j"] + devices["gpu:GPU-bbbb"]["energy_j"]
    assert bill["totals"]["measured_kwh"] == pytest.approx(gpu_j / J_PER_KWH)
    assert bill["totals"]["gpu_hours"] == pytest.approx((devices["gpu:GPU-aaaa"]["seconds"] + seconds_b) / 3600)
    counter_s = devices["gpu:GPU-aaaa"]["seconds"]
    all_s = sum(d["seconds"] for d in devices.values())
    assert bill["totals"]["coverage"] == pytest.approx(counter_s / all_s)  # one of four devices has a counter


def _records(run_dir: Path) -> list[dict]:
    from orchestrator.shared.energy.bill import read_records

    return read_records(run_dir)


# -- phases -----------------------------------------------------------------------------------


class SteadyMeter:
    """100 W on the fake clock."""

    device, kind, method, detail = "cpu", "cpu", "counter", "test"

    def __init__(self, clock: FakeClock):
        self.clock, self.last = clock, clock.now

    def read_j(self) -> float:
        joules, self.last = (self.clock.now - self.last) * 100.0, self.clock.now
        return joules


def test_energy_is_split_between_the_phases_the_loop_marks(tmp_path):
    clock = FakeClock()
    t0 = clock.now
    monitor = EnergyMonitor([SteadyMeter(clock)], tmp_path, "n", 0, 1.0, clock=clock)
    for at, phase, step in [(2, "train", 1), (6, "checkpoint", 1), (8, "train", 2)]:
        clock.now = t0 + at
        monitor.phase(phase, step)
    clock.now = t0 + 10
    monitor.flush()
    (record,) = json.loads(monitor.path.read_text())
    assert record["by_phase"] == pytest.approx({"startup": 200.0, "train": 600.0, "checkpoint": 200.0})
    assert record["train_j_at_save"] == {"1": pytest.approx(400.0)}
    assert (record["first_step"], record["last_step"], record["energy_j"]) == (1, 2, pytest.approx(1000.0))


# -- aggregation: nodes, restarts, duplicates ------------------------------------------------------


def _record(node, device, start, end, joules, first, last, saves=None, startup=0.0, method="estimated", kind="cpu"):
    train = joules - startup
    return {"node": node, "device": device, "kind": kind, "method": method, "detail": "", "rank": 0, "pid": 1,
            "start": start, "end": end, "seconds": end - start, "energy_j": joules,
            "by_phase": {"startup": startup, "train": train}, "by_hour": {str(int(start // 3600 * 3600)): joules},
            "train_j_at_save": {str(k): v for k, v in (saves or {}).items()}, "first_step": first, "last_step": last}


def test_nodes_and_attempts_are_summed_once_and_failures_are_priced():
    records = []
    for node in ("n1", "n2"):
        # attempt 1 trains steps 1-25, saves at 10 and 20, then is killed; attempt 2 resumes from 20
        records.append(_record(node, "cpu", 0, 100, 300.0, 1, 25, saves={10: 100.0, 20: 200.0}, startup=40.0))
        records.append(_record(node, "cpu", 120, 200, 180.0, 21, 40, startup=30.0))
    # a second process that also claimed n1's CPU during attempt 2 (overlap): one measurement, not two
    records.append(_record("n1", "cpu", 125, 195, 170.0, 21, 40))
    bill = make_bill(records, Intensity(500.0, "test"), 1.0, tokens=4000, steps=40)
    assert bill["duplicates_dropped"] == 1
    assert bill["nodes"]["n1"]["energy_j"] == pytest.approx(480.0) and bill["nodes"]["n2"]["energy_j"] == pytest.approx(480.0)
    assert bill["totals"]["kwh"] == pytest.approx(960.0 / J_PER_KWH)
    assert bill["attempts"] == 2
    # recomputed: attempt 1's training after its save of step 20 (260 - 200 J) per node; restart: attempt 2's start-up
    assert bill["failures_kwh"]["recomputed"] == pytest.approx(2 * 60.0 / J_PER_KWH)
    assert bill["failures_kwh"]["restart"] == pytest.approx(2 * 30.0 / J_PER_KWH)
    assert bill["phases_kwh"]["restart"] == pytest.approx(60.0 / J_PER_KWH)
    assert bill["phases_kwh"]["startup"] == pytest.approx(80.0 / J_PER_KWH)
    assert bill["totals"]["j_per_token"] == pytest.approx(960.0 / 4000) and bill["totals"]["j_per_step"] == pytest.approx(24.0)


def test_a_missing_device_is_reported_and_not_counted_as_zero():
    records = [_record("n1", "cpu", 0, 10, 100.0, 1, 5, method="counter"),
               {**_record("n1", "gpu:local-0", 0, 10, 0.0, 1, 5, kind="gpu"), "method": "missing", "energy_j": None, "detail": "NVML unavailable"}]
    bill = make_bill(records, Intensity(500.0, "test"), 1.0, tokens=0, steps=0)
    assert bill["totals"]["missing"] == [{"node": "n1", "device": "gpu:local-0", "reason": "NVML unavailable"}]
    gpu = next(d for d in bill["nodes"]["n1"]["devices"] if d["kind"] == "gpu")
    assert gpu["energy_j"] is None and gpu["kwh"] is None
    assert bill["totals"]["coverage"] == pytest.approx(0.5)


# -- carbon ----------------------------------------------------------------------------------------


def test_carbon_is_energy_times_pue_times_intensity():
    records = [_record("n1", "cpu", 0, 10, 3.6e6, 1, 5)]  # 1 kWh
    bill = make_bill(records, Intensity(400.0, "test", market_based_g_per_kwh=50.0), 1.5, tokens=0, steps=0)
    assert bill["totals"]["facility_kwh"] == pytest.approx(1.5)
    assert bill["totals"]["kgco2e"] == pytest.approx(1.5 * 400 / 1000)
    assert bill["totals"]["market_kgco2e"] == pytest.approx(1.5 * 50 / 1000)


def test_an_intensity_series_prices_each_hour_at_its_own_rate(tmp_path):
    csv = tmp_path / "grid.csv"
    csv.write_text("time,g_per_kwh\n2026-01-01T00:00:00Z,100\n2026-01-01T01:00:00+00:00,300\n")
    intensity = resolve_intensity(CarbonSpec(intensity_csv=Path("grid.csv")), tmp_path)
    hour0 = read_series(csv)[0][0]
    record = _record("n1", "cpu", hour0, hour0 + 7200, 2 * 3.6e6, 1, 5)
    record["by_hour"] = {str(int(hour0)): 3.6e6, str(int(hour0 + 3600)): 3.6e6}
    bill = make_bill([record], intensity, 1.0, tokens=0, steps=0)
    assert bill["totals"]["kgco2e"] == pytest.approx((100 + 300) / 1000)


def test_intensity_tables_and_their_errors(tmp_path):
    france = resolve_intensity(CarbonSpec(country="FRA"), tmp_path)
    assert 20 < france.g_per_kwh < 120 and "France" in france.source and "CodeCarbon" in france.source
    california = resolve_intensity(CarbonSpec(country="USA", region="CA"), tmp_path)
    assert "california" in california.source and california.g_per_kwh > 0
    assert "world average" in resolve_intensity(CarbonSpec(), tmp_path).source
    with pytest.raises(IntensityError, match="did you mean `FRA`"):
        resolve_intensity(CarbonSpec(country="France"), tmp_path)
    with pytest.raises(IntensityError, match="no such file"):
        resolve_intensity(CarbonSpec(intensity_csv=Path("nope.csv")), tmp_path)


def test_energy_spec_rules():
    assert EnergySpec(pue="hyperscale").pue_value == pytest.approx(1.10)
    with pytest.raises(ValueError, match="at least 1.0"):
        EnergySpec(pue=0.9)
    with pytest.raises(ValueError, match="one location-based source"):
        CarbonSpec(country="FRA", intensity_g_per_kwh=50)
    with pytest.raises(ValueError, match="country USA"):
        CarbonSpec(country="FRA", region="texas")
    with pytest.raises(ValueError, match="needs the monitor"):
        EnergySpec(enabled=False, budget_kwh=1.0)


# -- forecasts: the published arithmetic, reproduced ----------------------------------------------


def test_bloom_forecast():
    """BLOOM-176B: 1,082,990 A100-hours at 400 W = 433,196 kWh; at 57 gCO2e/kWh about 24.7 t (Luccioni et al. 2022)."""
    forecast = forecast_energy(1_082_990, 400.0, 1.0, 57.0, "A100 board power")
    assert forecast.kwh == pytest.approx(433_196, rel=1e-6)
    assert forecast.kgco2e / 1000 == pytest.approx(24.69, abs=0.01)


def test_llama2_7b_forecast():
    """Llama 2 7B: 184,320 GPU-hours at 400 W and 0.4235 kgCO2e/kWh = 31.22 t (Touvron et al. 2023, table 2)."""
    forecast = forecast_energy(184_320, 400.0, 1.0, 423.5, "A100 board power")
    assert forecast.kwh == pytest.approx(73_728)
    assert forecast.kgco2e / 1000 == pytest.approx(31.22, abs=0.01)


def test_plan_forecasts_gpu_runs_from_board_power(tmp_path):
    from orchestrator.shared.env import GpuInfo
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe

    env = make_env(tmp_path, gpus=(GpuInfo("NVIDIA A100-SXM4-80GB", 80 * 2**30, 8.0),) * 8)
    plan = make_plan(load_recipe(RECIPES / "llama-1b-gpu.yaml", ["energy.carbon.country=FRA", "energy.pue=1.2"]), env)
    forecast = plan.energy.forecast
    assert forecast.power_per_device_w == 400.0
    assert forecast.device_hours == pytest.approx(plan.time.device_hours)
    assert forecast.kwh == pytest.approx(plan.time.device_hours * 0.4)
    assert forecast.kgco2e == pytest.approx(forecast.kwh * 1.2 * plan.energy.intensity.g_per_kwh / 1000)


# -- budgets ---------------------------------------------------------------------------------------


def test_the_budget_warns_then_stops(tmp_path):
    run = RunDir(tmp_path)
    plan = EnergyRecord(pue=1.0, intensity=Intensity(1000.0, "test"), cpu=CpuPower(100.0, "test"), forecast=None)
    account = EnergyAccount(run, EnergySpec(budget_kwh=1.0, budget_warn_fraction=0.5), plan, tokens_per_step=10)
    parts = tmp_path / "energy/parts/n1"
    parts.mkdir(parents=True)

    def spend(kwh):
        (parts / "rank0.json").write_text(json.dumps([_record("n1", "cpu", 0, 10, kwh * J_PER_KWH, 1, 5)]))
        return account.settle(5)

    spend(0.4)
    assert not account.over_budget
    spend(0.6)
    assert not account.over_budget
    bill = spend(1.2)
    assert account.over_budget and bill.totals.kwh == pytest.approx(1.2)
    names = [json.loads(line)["event"] for line in run.events.read_text().splitlines()]
    assert names == ["energy_budget_warning", "energy_budget_exceeded"]
    assert json.loads((tmp_path / "energy.json").read_text())["totals"]["kwh"] == pytest.approx(1.2)


# -- the command ------------------------------------------------------------------------------------


def test_orch_energy_refuses_what_is_not_a_run_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["energy", str(tmp_path)])
    assert result.exit_code == 1 and "not a run directory" in result.output and "Traceback" not in result.output
    (tmp_path / "plan.json").write_text("{}")
    result = CliRunner().invoke(app, ["energy", str(tmp_path)])
    assert result.exit_code == 1 and "no energy records" in result.output


def test_a_misspelt_country_is_a_recipe_error_with_its_line(tmp_path):
    from orchestrator.errors import RecipeError
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {RECIPES / 'tiny-pretrain.yaml'}\nenergy:\n  carbon:\n    country: France\n")
    with pytest.raises(RecipeError) as error:
        make_plan(load_recipe(recipe), make_env(tmp_path))
    assert str(error.value).startswith(f"{recipe}:4: energy.carbon.country: 'France' is not in CodeCarbon's country table")
    assert "did you mean `FRA`" in str(error.value)


def test_the_energy_series_has_each_nodes_and_devices_power(tmp_path):
    run = RunDir(tmp_path)
    plan = EnergyRecord(pue=1.0, intensity=Intensity(100.0, "test"), cpu=CpuPower(100.0, "test"), forecast=None)
    account = EnergyAccount(run, EnergySpec(), plan, tokens_per_step=1)
    parts = tmp_path / "energy/parts/n1"
    parts.mkdir(parents=True)
    for joules in (100.0, 400.0):
        (parts / "rank0.json").write_text(json.dumps([_record("n1", "cpu", 0, 10, joules, 1, 5),
                                                      _record("n1", "memory", 0, 10, joules / 10, 1, 5, kind="memory")]))
        account.settle(5)
        time.sleep(0.2)
    first, second = [json.loads(line) for line in (tmp_path / "energy/series.jsonl").read_text().splitlines()]
    assert set(first["nodes"]["n1"]) == {"kwh"}
    node = second["nodes"]["n1"]
    assert node["kwh"] == pytest.approx(440.0 / J_PER_KWH)
    assert node["cpu_w"] > 0 and node["memory_w"] == pytest.approx(node["cpu_w"] / 10) and node["power_w"] == pytest.approx(node["cpu_w"] * 1.1)


def test_a_damaged_energy_part_is_read_past_as_a_torn_line_is(tmp_path):
    """A part that is not a list of device records, or an entry that is not one (a crash, a hand
    edit), once stopped every bill with a KeyError or TypeError; the records beside it still count."""
    EnergyMonitor(rank_meters(0, True, CpuPower(100.0, "test"), 1.0, nvml_loader=FakeNvml), tmp_path, "node-a", 0, 0.05).start().close()
    good = _records(tmp_path)
    before = make_bill(good, Intensity(100.0, "test"), 1.0, tokens=0, steps=0)
    parts = tmp_path / "energy/parts/node-a"
    (parts / "rank1-1-1.json").write_text('[1, {"node": "node-a"}, {"node": "x", "device": "cpu", "start": "soon"}]')
    (parts / "rank2-1-1.json").write_text('{"not": "a list"}')
    (parts / "rank3-1-1.json").write_text("[" * 100_000)
    assert good and _records(tmp_path) == good
    assert make_bill(_records(tmp_path), Intensity(100.0, "test"), 1.0, tokens=0, steps=0) == before
