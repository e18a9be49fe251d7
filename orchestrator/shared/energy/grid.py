"""Grid carbon intensity: which figure applies to a run, and where it comes from.

The tables are CodeCarbon's offline data (country energy mixes from Ember/Our World in Data, US
states from EPA eGRID), read straight from the installed package's data files without importing
CodeCarbon (which pulls in pandas), so that `orch plan` stays fast. The package version and the
table's year travel with every figure.
"""

from __future__ import annotations

import bisect
import csv
import difflib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from orchestrator.energy.spec import CarbonSpec

LBS_PER_MWH_TO_G_PER_KWH = 453.59237 / 1000


@dataclass(frozen=True)
class Intensity:
    """A location-based intensity in gCO2e/kWh: one figure, or an hourly series (`series` holds
    (unix time, g/kWh) points, each applying until the next)."""

    g_per_kwh: float
    source: str
    basis: str = "location-based"
    series: tuple[tuple[float, float], ...] = field(default=())
    market_based_g_per_kwh: float | None = None

    def at(self, unix_time: float) -> float:
        if not self.series:
            return self.g_per_kwh
        times = [t for t, _ in self.series]
        index = max(0, bisect.bisect_right(times, unix_time) - 1)
        return self.series[index][1]

    def summary(self) -> dict:
        """The figures the bill states, without the series."""
        return {"g_per_kwh": self.g_per_kwh, "source": self.source, "basis": self.basis, "series_points": len(self.series),
                "market_based_g_per_kwh": self.market_based_g_per_kwh}


class IntensityError(ValueError):
    """The recipe names a place or file the tables cannot answer for; the message says what would."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def codecarbon_data() -> Path:
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise IntensityError("carbon", "CodeCarbon's offline tables are not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _codecarbon_version() -> str:
    return importlib.metadata.version("codecarbon")


@lru_cache(maxsize=1)
def _countries() -> dict:
    return json.loads((codecarbon_data() / "private_infra" / "global_energy_mix.json").read_text())


@lru_cache(maxsize=1)
def _world_average() -> float:
    return float(json.loads((codecarbon_data() / "private_infra" / "carbon_intensity_per_source.json").read_text())["world_average"])


def resolve_intensity(spec: CarbonSpec, base_dir: Path) -> Intensity:
    """The intensity a recipe asks for; `base_dir` resolves a relative CSV path (the working directory)."""
    market = spec.market_based_g_per_kwh
    if spec.intensity_g_per_kwh is not None:
        return Intensity(spec.intensity_g_per_kwh, "fixed in the recipe (energy.carbon.intensity_g_per_kwh)", market_based_g_per_kwh=market)
    if spec.intensity_csv is not None:
        path = spec.intensity_csv if spec.intensity_csv.is_absolute() else base_dir / spec.intensity_csv
        series = read_series(path)
        mean = sum(v for _, v in series) / len(series)
        return Intensity(mean, f"time series {path} ({len(series)} points)", series=series, market_based_g_per_kwh=market)
    if spec.country is None:
        return Intensity(_world_average(), f"world average, CodeCarbon {_codecarbon_version()} (IEA 2019); set energy.carbon.country",
                         market_based_g_per_kwh=market)
    code = spec.country.upper()
    countries = _countries()
    if code not in countries:
        by_name = {entry["country_name"].lower(): key for key, entry in countries.items()}
        near = [by_name[spec.country.lower()]] if spec.country.lower() in by_name else difflib.get_close_matches(code, countries, n=1)
        hint = f"; did you mean `{near[0]}` ({countries[near[0]]['country_name']})?" if near else ""
        raise IntensityError("carbon.country", f"'{spec.country}' is not in CodeCarbon's country table (ISO alpha-3 codes){hint}")
    if spec.region:
        return _us_state(spec.region, market)
    entry = countries[code]
    source = f"{entry['country_name']} {entry['year']} energy mix, CodeCarbon {_codecarbon_version()} global_energy_mix.json (Ember/OWID)"
    return Intensity(float(entry["carbon_intensity"]), source, market_based_g_per_kwh=market)


def _us_state(region: str, market: float | None) -> Intensity:
    table = json.loads((codecarbon_data() / "private_infra" / "2023" / "usa_emissions.json").read_text())
    states = {k: v for k, v in table.items() if not k.startswith("_")}
    key = region.lower().replace(" ", "_")
    by_code = {v["regionCode"].lower(): k for k, v in states.items()}
    key = by_code.get(key, key)
    if key not in states:
        near = difflib.get_close_matches(key, states, n=1)
        hint = f"; did you mean `{near[0]}`?" if near else ""
        raise IntensityError("carbon.region", f"'{region}' is not a US state in CodeCarbon's eGRID table{hint}")
    src = table["_source"]
    source = f"{key} {src['year']}, {src['name']}, CodeCarbon {_codecarbon_version()}"
    return Intensity(states[key]["emissions"] * LBS_PER_MWH_TO_G_PER_KWH, source, market_based_g_per_kwh=market)


def read_series(path: Path) -> tuple[tuple[float, float], ...]:
    """Rows of `time,g_per_kwh`, sorted by time; the times are ISO 8601 (UTC unless they say otherwise)."""
    if not path.is_file():
        raise IntensityError("carbon.intensity_csv", f"{path}: no such file")
    points = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"time", "g_per_kwh"} - set(reader.fieldnames or [])
        if missing:
            raise IntensityError("carbon.intensity_csv", f"{path}: needs columns `time` and `g_per_kwh` (missing {', '.join(sorted(missing))})")
        for line, row in enumerate(reader, start=2):
            try:
                moment = datetime.fromisoformat(row["time"])
                value = float(row["g_per_kwh"])
            except ValueError as exc:
                raise IntensityError("carbon.intensity_csv", f"{path}:{line}: {exc}") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            points.append((moment.timestamp(), value))
    if not points:
        raise IntensityError("carbon.intensity_csv", f"{path}: no rows")
    return tuple(sorted(points))
