"""`energy.json`, the run's energy and carbon bill, as a frozen record (`EnergyBill`).

Rank 0 writes it (`orchestrator.shared.energy.bill` computes it, `write_bill` stores it); `orch energy`,
status, show, the run and sweep reports, the gates, the release and the benchmarks read it through
`read_bill` or get one from `bill_for`, so a renamed total fails in a unit test, not in a report.
The file has no `format` field: a bill written before this record reads as it is.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import EnergyForecast, Record, _read


class DevicePart(Record):
    """One device's energy over one process lifetime, as each rank's sampler writes it into
    `energy/parts/<node>/rank<r>-<start>-<pid>.json` (a list of these). The bill adds them up."""

    node: str
    device: str
    kind: str
    method: str
    detail: str = ""
    rank: int | None = None
    pid: int | None = None
    start: float
    end: float
    seconds: float
    energy_j: float | None
    by_phase: dict[str, float] = {}
    by_hour: dict[str, float] = {}
    train_j_at_save: dict[str, float] = {}
    first_step: int | None = None
    last_step: int | None = None


def read_parts(run: RunDir) -> list[DevicePart]:
    """Every device record of the run's parts, each checked as a `DevicePart` (a part being replaced
    this instant, or one that is not a list of them, is read past like a torn log line)."""
    parts = []
    for path in sorted(run.energy_parts.glob("*/*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        for entry in content if isinstance(content, list) else []:
            try:
                parts.append(DevicePart.model_validate(entry))
            except ValidationError:
                continue
    return parts


class DeviceBill(Record):
    """One device's line: its attempts' energy added (None where its meter is missing)."""

    device: str
    kind: str
    method: str
    detail: str
    seconds: float
    energy_j: float | None
    kwh: float | None
    attempts: int


class NodeBill(Record):
    devices: list[DeviceBill]
    energy_j: float
    kwh: float


class MissingDevice(Record):
    """A device no meter covered: not counted, not zero."""

    node: str
    device: str
    reason: str


class IntensityFigures(Record):
    """The grid intensity the bill used (`Intensity.summary()`, without its series)."""

    g_per_kwh: float
    source: str
    basis: str
    series_points: int
    market_based_g_per_kwh: float | None


class BillTotals(Record):
    kwh: float
    """IT energy: every device's, measured and estimated."""
    measured_kwh: float
    estimated_kwh: float
    coverage: float
    """The share of device-seconds an energy counter measured."""
    missing: list[MissingDevice]
    pue: float
    facility_kwh: float
    kgco2e: float
    market_kgco2e: float | None
    intensity: IntensityFigures
    gpu_hours: float
    tokens: int
    steps: int
    j_per_token: float | None
    j_per_step: float | None


class FailuresKwh(Record):
    recomputed: float
    restart: float
    lost: float


class EnergyBill(Record):
    """`energy.json`: per node and device, the totals, energy per phase and lost to failures."""

    version: int = 1
    nodes: dict[str, NodeBill]
    totals: BillTotals
    phases_kwh: dict[str, float]
    failures_kwh: FailuresKwh
    attempts: int
    duplicates_dropped: int
    forecast: EnergyForecast | None
    """The plan's forecast, for the bill to be set against it."""

    @property
    def forecast_kwh(self) -> float | None:
        return (self.forecast.kwh or None) if self.forecast else None

    def devices(self) -> list[tuple[str, DeviceBill]]:
        """(node, device line) for every device, node by node."""
        return [(node, device) for node, entry in self.nodes.items() for device in entry.devices]


def read_bill(run: RunDir) -> EnergyBill | None:
    """The bill as last written, or None before rank 0 first wrote one (or with energy off)."""
    return _read(run.energy, EnergyBill.model_validate_json) if run.energy.exists() else None


def write_bill(run: RunDir, bill: EnergyBill) -> None:
    run.write_file(run.energy.name, bill_json(bill))


def bill_json(bill: EnergyBill) -> str:
    """The bill as `energy.json` holds it (and `orch energy --json` and a release print it)."""
    return json.dumps(bill.model_dump(mode="json"), indent=2)
