"""`energy.json` as a record: what rank 0 writes reads back the same, a bill written by the previous
main reads (and is written again byte for byte), and a damaged bill is one readable line."""

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.shared.energy.bill import J_PER_KWH, make_bill
from orchestrator.shared.energy.grid import Intensity
from orchestrator.errors import DamagedRun
from orchestrator.rundir.bill import EnergyBill, bill_json, read_bill, write_bill
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import EnergyForecast

WRITTEN_BY_D92F83D = Path(__file__).parent / "run_fixtures" / "written-by-d92f83d"


def _record(device: str, kind: str, method: str, joules: float | None) -> dict:
    return {"node": "n1", "device": device, "kind": kind, "method": method, "detail": "test", "start": 0.0, "end": 10.0,
            "seconds": 10.0, "energy_j": joules, "by_phase": {"train": joules or 0.0}, "by_hour": {"0": joules or 0.0},
            "train_j_at_save": {}, "first_step": 1, "last_step": 4}


def test_a_bill_round_trips_through_energy_json(tmp_path):
    content = make_bill([_record("cpu", "cpu", "counter", 3600.0), _record("gpu:local-0", "gpu", "missing", None)],
                        Intensity(400.0, "test", market_based_g_per_kwh=50.0), 1.5, tokens=400, steps=4,
                        forecast=EnergyForecast(device_hours=0.01, power_per_device_w=200.0, kwh=0.002, facility_kwh=0.003, kgco2e=0.001, basis="test"))
    run = RunDir(tmp_path)
    write_bill(run, EnergyBill.model_validate(content))
    assert json.loads(run.energy.read_text()) == content  # the keys the computation made, in its order
    bill = read_bill(run)
    assert bill == EnergyBill.model_validate(content)
    assert bill.totals.kwh == pytest.approx(3600.0 / J_PER_KWH) and bill.totals.facility_kwh == pytest.approx(1.5e-3)
    assert [(m.node, m.device) for m in bill.totals.missing] == [("n1", "gpu:local-0")]
    assert [(node, d.device, d.kwh) for node, d in bill.devices()] == [("n1", "cpu", pytest.approx(1e-3)), ("n1", "gpu:local-0", None)]
    assert bill.forecast_kwh == 0.002


def test_a_bill_written_by_the_previous_main_reads_and_is_written_the_same(tmp_path):
    shutil.copy(WRITTEN_BY_D92F83D / "energy.json", tmp_path / "energy.json")
    run = RunDir(tmp_path)
    bill = read_bill(run)
    assert bill.totals.steps == 6 and bill.attempts == 2 and bill.totals.intensity.g_per_kwh == 475.0
    assert bill.failures_kwh.restart == bill.phases_kwh["restart"]
    assert bill_json(bill) == (WRITTEN_BY_D92F83D / "energy.json").read_text()


def test_no_bill_is_none_and_a_damaged_one_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    assert read_bill(run) is None
    content = json.loads((WRITTEN_BY_D92F83D / "energy.json").read_text())
    del content["totals"]["facility_kwh"]
    run.energy.write_text(json.dumps(content))
    with pytest.raises(DamagedRun, match=r"energy\.json.*facility_kwh"):
        read_bill(run)
