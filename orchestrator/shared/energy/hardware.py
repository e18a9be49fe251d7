"""Power figures for estimates: a CPU's TDP and how its draw follows load, a GPU's board power.

The CPU figures are CodeCarbon's: its TDP table (`cpu_power.csv`), its name matching, its
fallback for unknown models (4 W per hardware thread) and its machine-mode load curve. They are
re-applied here, reading the same data file, because CodeCarbon only exposes them through
classes that import pandas, too slow for `orch plan` and the ranks' start.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache

from orchestrator.shared.energy.grid import codecarbon_data

UNKNOWN_CPU_W_PER_THREAD = 4.0

# Board power (W) of data-centre GPUs by product name, from NVIDIA's datasheets (SXM parts).
GPU_BOARD_POWER_W = {"H200": 700.0, "H100": 700.0, "A100": 400.0, "L40S": 350.0, "A10": 150.0, "V100": 300.0}


@dataclass(frozen=True)
class CpuPower:
    tdp_w: float
    source: str


def cpu_load_power_w(tdp_w: float, load: float) -> float:
    """CodeCarbon's machine-mode curve: 10% of TDP at idle, rising with the cube of the load."""
    load = min(max(load, 0.0), 1.0)
    return tdp_w * (0.1 + 0.9 * load**3)


@lru_cache(maxsize=1)
def _tdp_table() -> dict[str, float]:
    table = {}
    with (codecarbon_data() / "hardware" / "cpu_power.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                table[row["Name"]] = float(row["TDP"])
            except (TypeError, ValueError):
                continue  # a few rows of the upstream table are malformed (e.g. "27.29.5")
    return table


def _normalise(name: str) -> str:
    name = name.replace("(R)", "").replace("(TM)", "")
    name = re.sub(r" CPU @ .*$", "", name)
    name = re.sub(r" @\s*\d+\.\d+GHz", "", name).replace(" CPU", "")
    return " ".join(name.split())


def _tokens(name: str) -> frozenset[str]:
    return frozenset(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def cpu_power(model: str, threads: int, override_w: float | None = None) -> CpuPower:
    """The TDP for `model`: the recipe's figure, else CodeCarbon's table (an exact name, or one entry
    whose words all appear in the model string), else CodeCarbon's per-thread default."""
    if override_w is not None:
        return CpuPower(override_w, "energy.cpu_tdp_w in the recipe")
    table = _tdp_table()
    by_lower = {name.lower(): name for name in table}
    for candidate in (model, _normalise(model)):
        if candidate.lower() in by_lower:
            name = by_lower[candidate.lower()]
            return CpuPower(table[name], f"CodeCarbon TDP table: {name}")
    words = _tokens(_normalise(model))
    matches = [name for name in table if _tokens(name) and _tokens(name) <= words]
    best = sorted(matches, key=lambda name: -len(_tokens(name)))
    if best and (len(best) == 1 or len(_tokens(best[0])) > len(_tokens(best[1]))):
        return CpuPower(table[best[0]], f"CodeCarbon TDP table: {best[0]}")
    return CpuPower(
        UNKNOWN_CPU_W_PER_THREAD * threads,
        f"'{model}' is not in CodeCarbon's TDP table: its default {UNKNOWN_CPU_W_PER_THREAD:g} W x {threads} threads; set energy.cpu_tdp_w",
    )


def gpu_board_power_w(name: str) -> float | None:
    return next((watts for key, watts in GPU_BOARD_POWER_W.items() if key in name), None)
