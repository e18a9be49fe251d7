"""The run's energy bill: every rank's device records, from every attempt, summed once.

A device is identified by (node, device). Its records from successive attempts follow each other
in time and are added; two records of the same device that overlap in time (two processes that
both claimed it) are one measurement, so only the larger is kept. The result is `energy.json`.

Energy lost to failures: when an attempt ends and the next resumes from step s, the training
energy the earlier attempt spent after its save of step s is recomputed, and the next attempt's
start-up (initialisation and loading the checkpoint) is restart time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from orchestrator.energy.grid import Intensity
from orchestrator.energy.monitor import PARTS_DIR

ENERGY_FILE = "energy.json"
J_PER_KWH = 3.6e6
COUNTER_METHODS = ("counter",)
MEASURED_METHODS = ("counter", "integrated")


def read_records(run_dir: Path) -> list[dict]:
    records = []
    for path in sorted((run_dir / PARTS_DIR).glob("*/*.json")):
        try:
            records += json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a part being replaced this instant; the next aggregation reads it
    return records


def deduplicate(records: list[dict]) -> tuple[dict[tuple[str, str], list[dict]], int]:
    """Per (node, device): its records in time order, overlapping ones reduced to the larger."""
    by_device: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["start"]):
        by_device[(record["node"], record["device"])].append(record)
    dropped = 0
    for key, items in by_device.items():
        kept: list[dict] = []
        for record in items:
            if kept and record["start"] < kept[-1]["end"]:
                dropped += 1
                if (record["energy_j"] or 0) > (kept[-1]["energy_j"] or 0):
                    kept[-1] = record
                continue
            kept.append(record)
        by_device[key] = kept
    return dict(by_device), dropped


def _recomputed_j(earlier: dict, later: dict) -> float:
    """Training energy of `earlier` spent after the step `later` resumed from."""
    if later["first_step"] is None or earlier["first_step"] is None or earlier["energy_j"] is None:
        return 0.0
    resumed_from = later["first_step"] - 1
    train_j = earlier["by_phase"].get("train", 0.0)
    if resumed_from < earlier["first_step"]:
        return train_j
    saves = {int(step): j for step, j in earlier["train_j_at_save"].items() if int(step) <= resumed_from}
    if earlier["last_step"] is not None and resumed_from >= earlier["last_step"]:
        return 0.0
    return train_j - (saves[max(saves)] if saves else 0.0)


def make_bill(records: list[dict], intensity: Intensity, pue: float, tokens: int, steps: int, forecast: dict | None = None) -> dict:
    by_device, dropped = deduplicate(records)
    nodes: dict[str, dict] = defaultdict(lambda: {"energy_j": 0.0, "devices": []})
    phases: dict[str, float] = defaultdict(float)
    totals = {"energy_j": 0.0, "measured_j": 0.0, "estimated_j": 0.0, "grams": 0.0, "device_s": 0.0, "counter_s": 0.0, "gpu_s": 0.0}
    recomputed_j = restart_j = 0.0
    missing = []
    for (node, device), items in sorted(by_device.items()):
        method, kind = items[-1]["method"], items[-1]["kind"]
        energy = None if method == "missing" else sum(r["energy_j"] or 0.0 for r in items)
        seconds = sum(r["seconds"] for r in items)
        for index, record in enumerate(items):
            for phase, joules in record["by_phase"].items():
                phases["restart" if phase == "startup" and index else phase] += joules
            for hour, joules in record["by_hour"].items():
                totals["grams"] += joules / J_PER_KWH * intensity.at(float(hour) + 1800)
            if index:
                recomputed_j += _recomputed_j(items[index - 1], record)
                restart_j += record["by_phase"].get("startup", 0.0)
        nodes[node]["devices"].append({"device": device, "kind": kind, "method": method, "detail": items[-1]["detail"],
                                       "seconds": seconds, "energy_j": energy, "kwh": None if energy is None else energy / J_PER_KWH,
                                       "attempts": len(items)})
        totals["device_s"] += seconds
        totals["gpu_s"] += seconds if kind == "gpu" else 0.0
        if energy is None:
            missing.append({"node": node, "device": device, "reason": items[-1]["detail"]})
            continue
        nodes[node]["energy_j"] += energy
        totals["energy_j"] += energy
        totals["measured_j" if method in MEASURED_METHODS else "estimated_j"] += energy
        totals["counter_s"] += seconds if method in COUNTER_METHODS else 0.0
    kwh = totals["energy_j"] / J_PER_KWH
    kg = totals["grams"] * pue / 1000
    return {
        "version": 1,
        "nodes": {node: {**value, "kwh": value["energy_j"] / J_PER_KWH} for node, value in sorted(nodes.items())},
        "totals": {
            "kwh": kwh,
            "measured_kwh": totals["measured_j"] / J_PER_KWH,
            "estimated_kwh": totals["estimated_j"] / J_PER_KWH,
            "coverage": totals["counter_s"] / totals["device_s"] if totals["device_s"] else 0.0,
            "missing": missing,
            "pue": pue,
            "facility_kwh": kwh * pue,
            "kgco2e": kg,
            "market_kgco2e": kwh * pue * intensity.market_based_g_per_kwh / 1000 if intensity.market_based_g_per_kwh is not None else None,
            "intensity": intensity.summary(),
            "gpu_hours": totals["gpu_s"] / 3600,
            "tokens": tokens,
            "steps": steps,
            "j_per_token": totals["energy_j"] / tokens if tokens else None,
            "j_per_step": totals["energy_j"] / steps if steps else None,
        },
        "phases_kwh": {phase: joules / J_PER_KWH for phase, joules in sorted(phases.items())},
        "failures_kwh": {"recomputed": recomputed_j / J_PER_KWH, "restart": restart_j / J_PER_KWH,
                         "lost": (recomputed_j + restart_j) / J_PER_KWH},
        "attempts": max((len(items) for items in by_device.values()), default=0),
        "duplicates_dropped": dropped,
        "forecast": forecast,
    }
