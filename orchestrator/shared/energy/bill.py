"""The run's energy bill: every rank's device records, from every attempt, summed once.

A device is identified by (node, device). Its records from successive attempts follow each other
in time and are added; two records of the same device that overlap in time (two processes that
both claimed it) are one measurement, so only the larger is kept. The result is `energy.json`.

Energy lost to failures: when an attempt ends and the next resumes from step s, the training
energy the earlier attempt spent after its save of step s is recomputed, and the next attempt's
start-up (initialisation and loading the checkpoint) is restart time.

`make_bill` builds the file's content; `compute_bill` and `bill_for` return it as the typed record
every reader gets (`orchestrator.rundir.bill.EnergyBill`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.shared.energy.grid import Intensity
from orchestrator.errors import EnergyError
from orchestrator.rundir.bill import DevicePart, EnergyBill, read_parts
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import EnergyForecast, EnergyRecord, read_plan

J_PER_KWH = 3.6e6
COUNTER_METHODS = ("counter",)
MEASURED_METHODS = ("counter", "integrated")


def read_records(run_dir: Path) -> list[DevicePart]:
    return read_parts(RunDir(run_dir))


def deduplicate(records: list[DevicePart]) -> tuple[dict[tuple[str, str], list[DevicePart]], int]:
    """Per (node, device): its records in time order, overlapping ones reduced to the larger."""
    by_device: dict[tuple[str, str], list[DevicePart]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.start):
        by_device[(record.node, record.device)].append(record)
    dropped = 0
    for key, items in by_device.items():
        kept: list[DevicePart] = []
        for record in items:
            if kept and record.start < kept[-1].end:
                dropped += 1
                if (record.energy_j or 0) > (kept[-1].energy_j or 0):
                    kept[-1] = record
                continue
            kept.append(record)
        by_device[key] = kept
    return dict(by_device), dropped


def _recomputed_j(earlier: DevicePart, later: DevicePart) -> float:
    """Training energy of `earlier` spent after the step `later` resumed from."""
    if later.first_step is None or earlier.first_step is None or earlier.energy_j is None:
        return 0.0
    resumed_from = later.first_step - 1
    train_j = earlier.by_phase.get("train", 0.0)
    if resumed_from < earlier.first_step:
        return train_j
    saves = {int(step): j for step, j in earlier.train_j_at_save.items() if int(step) <= resumed_from}
    if earlier.last_step is not None and resumed_from >= earlier.last_step:
        return 0.0
    return train_j - (saves[max(saves)] if saves else 0.0)


@dataclass
class _Tally:
    """Running sums over the devices of a bill."""

    energy_j: float = 0.0
    measured_j: float = 0.0
    estimated_j: float = 0.0
    grams: float = 0.0
    device_s: float = 0.0
    counter_s: float = 0.0
    gpu_s: float = 0.0
    recomputed_j: float = 0.0
    restart_j: float = 0.0
    phases: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    missing: list[dict] = field(default_factory=list)

    def add_device(self, node: str, device: str, items: list[DevicePart], intensity: Intensity) -> dict:
        """One device's records (its attempts, in order) into the sums; returns its line of the bill."""
        last = items[-1]
        energy = None if last.method == "missing" else sum(r.energy_j or 0.0 for r in items)
        seconds = sum(r.seconds for r in items)
        for index, record in enumerate(items):
            for phase, joules in record.by_phase.items():
                self.phases["restart" if phase == "startup" and index else phase] += joules
            for hour, joules in record.by_hour.items():
                self.grams += joules / J_PER_KWH * intensity.at(float(hour) + 1800)
            if index:
                self.recomputed_j += _recomputed_j(items[index - 1], record)
                self.restart_j += record.by_phase.get("startup", 0.0)
        self.device_s += seconds
        self.gpu_s += seconds if last.kind == "gpu" else 0.0
        if energy is None:
            self.missing.append({"node": node, "device": device, "reason": last.detail})
        else:
            self.energy_j += energy
            if last.method in MEASURED_METHODS:
                self.measured_j += energy
            else:
                self.estimated_j += energy
            self.counter_s += seconds if last.method in COUNTER_METHODS else 0.0
        return {"device": device, "kind": last.kind, "method": last.method, "detail": last.detail, "seconds": seconds,
                "energy_j": energy, "kwh": None if energy is None else energy / J_PER_KWH, "attempts": len(items)}


def make_bill(records: list[DevicePart | dict], intensity: Intensity, pue: float, tokens: int, steps: int, forecast: EnergyForecast | None = None) -> dict:
    """The bill's content from the device records (read from the parts, or given as their JSON)."""
    by_device, dropped = deduplicate([DevicePart.model_validate(r) for r in records])
    tally = _Tally()
    nodes: dict[str, list[dict]] = defaultdict(list)
    for (node, device), items in sorted(by_device.items()):
        nodes[node].append(tally.add_device(node, device, items, intensity))
    kwh = tally.energy_j / J_PER_KWH
    market = intensity.market_based_g_per_kwh
    return {
        "version": 1,
        "nodes": {node: {"devices": devices, "energy_j": sum(d["energy_j"] or 0.0 for d in devices),
                         "kwh": sum(d["kwh"] or 0.0 for d in devices)} for node, devices in nodes.items()},
        "totals": {
            "kwh": kwh,
            "measured_kwh": tally.measured_j / J_PER_KWH,
            "estimated_kwh": tally.estimated_j / J_PER_KWH,
            "coverage": tally.counter_s / tally.device_s if tally.device_s else 0.0,
            "missing": tally.missing,
            "pue": pue,
            "facility_kwh": kwh * pue,
            "kgco2e": tally.grams * pue / 1000,
            "market_kgco2e": kwh * pue * market / 1000 if market is not None else None,
            "intensity": intensity.summary(),
            "gpu_hours": tally.gpu_s / 3600,
            "tokens": tokens,
            "steps": steps,
            "j_per_token": tally.energy_j / tokens if tokens else None,
            "j_per_step": tally.energy_j / steps if steps else None,
        },
        "phases_kwh": {phase: joules / J_PER_KWH for phase, joules in sorted(tally.phases.items())},
        "failures_kwh": {"recomputed": tally.recomputed_j / J_PER_KWH, "restart": tally.restart_j / J_PER_KWH,
                         "lost": (tally.recomputed_j + tally.restart_j) / J_PER_KWH},
        "attempts": max((len(items) for items in by_device.values()), default=0),
        "duplicates_dropped": dropped,
        "forecast": forecast.model_dump(mode="json") if forecast else None,
    }


def compute_bill(run_dir: Path, energy_plan: EnergyRecord, tokens_per_step: int, step: int) -> EnergyBill:
    """The bill from every record in the run directory, with the plan's intensity, PUE and forecast."""
    return EnergyBill.model_validate(make_bill(read_records(run_dir), energy_plan.intensity, energy_plan.pue, step * tokens_per_step, step, energy_plan.forecast))


def bill_for(run_dir: Path) -> EnergyBill:
    """The bill as it stands (for `orch energy`, during or after a run)."""
    run = RunDir(run_dir)
    if not run.plan.is_file():
        raise EnergyError(f"{run_dir}: not a run directory (no plan.json)")
    if not read_records(run.path):
        raise EnergyError(f"{run_dir}: no energy records (was energy.enabled false, or has the run not started?)")
    try:
        plan = read_plan(run)
    except ValueError as exc:
        raise EnergyError(f"{run_dir}: plan.json was written by another version ({str(exc).splitlines()[0]})") from None
    rows = run.metric_rows()
    return compute_bill(run.path, plan.energy, plan.batch.tokens_per_step, rows[-1]["step"] if rows else 0)
