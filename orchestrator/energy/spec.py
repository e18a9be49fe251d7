"""The `energy` section: how energy is measured, how it becomes carbon, and what a run may spend.

Carbon is energy x PUE x grid carbon intensity. PUE defaults to 1.0 (IT energy only) so that a
bill never silently includes a data centre overhead nobody chose; the presets name published
fleet figures. The intensity is location-based by default (a country, and for the USA a state,
looked up in CodeCarbon's offline table), or a fixed figure, or an hourly series for the run's
period; a market-based figure is reported only when the user supplies one, and labelled so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from orchestrator.spec import RuleViolation, Spec

PUE_PRESETS = {
    "it-only": 1.0,  # IT equipment alone: the default
    "hyperscale": 1.10,  # large cloud fleets (Google reports a fleet-wide trailing-twelve-month PUE of 1.10 for 2023)
    "industry-average": 1.58,  # Uptime Institute Global Data Center Survey 2023, average annual PUE
}


class CarbonSpec(Spec):
    """Where the run's electricity comes from. With nothing set, the world average is used and
    `orch plan` says so."""

    country: Optional[str] = Field(None, description="ISO 3166 alpha-3 code, e.g. FRA, DEU, USA")
    region: Optional[str] = Field(None, description="a US state (e.g. california) within country USA")
    intensity_g_per_kwh: Optional[float] = Field(None, ge=0, description="a fixed location-based intensity, overriding the table")
    intensity_csv: Optional[Path] = Field(None, description="a time series: columns `time` (ISO 8601) and `g_per_kwh`")
    market_based_g_per_kwh: Optional[float] = Field(None, ge=0, description="from the user's supplier contract; reported beside")

    @model_validator(mode="after")
    def _one_source(self) -> "CarbonSpec":
        chosen = [k for k in ("country", "intensity_g_per_kwh", "intensity_csv") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise RuleViolation(chosen[1], f"give one location-based source, not {' and '.join(chosen)}")
        if self.region and (self.country or "").upper() != "USA":
            raise RuleViolation("region", "regions are known for country USA (US states); set `country: USA` or drop `region`")
        return self


class EnergySpec(Spec):
    """Sampling runs in a thread of each rank, every `interval_s`; energy is attributed per device."""

    enabled: bool = True
    interval_s: float = Field(1.0, ge=0.05, le=60)
    pue: Union[float, Literal["it-only", "hyperscale", "industry-average"]] = 1.0
    cpu_tdp_w: Optional[float] = Field(None, gt=0, description="overrides CodeCarbon's TDP table for the CPU estimate")
    memory_w_per_gib: float = Field(0.375, ge=0, description="3 W per 8 GiB in use, CodeCarbon's classic figure")
    carbon: CarbonSpec = CarbonSpec()
    budget_kwh: Optional[float] = Field(None, gt=0)
    budget_kgco2e: Optional[float] = Field(None, gt=0)
    budget_warn_fraction: float = Field(0.8, gt=0, le=1)

    @model_validator(mode="after")
    def _pue_range(self) -> "EnergySpec":
        if isinstance(self.pue, float) and self.pue < 1.0:
            raise RuleViolation("pue", f"PUE is facility energy over IT energy, at least 1.0 (got {self.pue})")
        if not self.enabled and (self.budget_kwh or self.budget_kgco2e):
            raise RuleViolation("enabled", "an energy budget needs the monitor: set `energy.enabled: true`")
        return self

    @property
    def pue_value(self) -> float:
        return PUE_PRESETS[self.pue] if isinstance(self.pue, str) else self.pue
