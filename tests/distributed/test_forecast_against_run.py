"""The plan's forecast of the default recipe against what its run measured on this machine: `make
demo`'s run, which the suite trains once (the `demo` fixture). Its plan.json holds the forecast
made just before it trained, its summary what it took; a ratio of the two, so no fixed timing."""

import pytest

from orchestrator.plan.calibration import read_calibrations
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.records import read_plan

pytestmark = pytest.mark.distributed


def test_the_default_recipes_forecast_lands_within_2x_of_its_measured_time_and_energy(demo, data_cache):
    """It was 10-20x pessimistic (an assumed 25% MFU of a matmul rate measured under load)."""
    run = RunDir(demo / "run")
    plan, summary = read_plan(run), read_summary(run)
    measured_s = summary.attempt_wall_s or summary.wall_s
    assert 0.5 <= plan.estimate.wall_s / measured_s <= 2, f"forecast {plan.estimate.wall_s:.0f}s, took {measured_s:.0f}s ({plan.estimate.basis})"
    forecast_kwh, billed_kwh = plan.energy.forecast.kwh, summary.energy.kwh
    assert 0.5 <= forecast_kwh / billed_kwh <= 2, f"forecast {forecast_kwh:.4g} kWh, billed {billed_kwh:.4g} ({plan.energy.forecast.basis})"
    # The run filed its measurements for the next plan of its shape.
    assert str(run.path) in [m.run_dir for m in read_calibrations(data_cache).measured]
