"""The energy and carbon a run will cost, from the plan's time estimate, before it starts.

The arithmetic is the one published training reports use: device-hours x power per device x PUE
x grid intensity. On GPUs it counts the GPUs' board power (the host's CPUs are not known to the
planner); on CPUs it counts each node's CPU at full load plus its memory in use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from orchestrator.energy.grid import Intensity
from orchestrator.energy.hardware import CpuPower, cpu_load_power_w, gpu_board_power_w
from orchestrator.energy.spec import EnergySpec

GiB = 2**30


@dataclass(frozen=True)
class EnergyForecast:
    device_hours: float
    power_per_device_w: float | None
    kwh: float | None
    facility_kwh: float | None
    kgco2e: float | None
    basis: str

    def summary(self) -> dict:
        return asdict(self)


def forecast_energy(device_hours: float, power_per_device_w: float | None, pue: float, intensity_g_per_kwh: float, basis: str) -> EnergyForecast:
    """kWh = device-hours x kW per device; kgCO2e = kWh x PUE x g/kWh / 1000."""
    if power_per_device_w is None:
        return EnergyForecast(device_hours, None, None, None, None, basis)
    kwh = device_hours * power_per_device_w / 1000
    return EnergyForecast(device_hours, power_per_device_w, kwh, kwh * pue, kwh * pue * intensity_g_per_kwh / 1000, basis)


def plan_forecast(
    spec: EnergySpec, device: str, gpu_name: str | None, cpu: CpuPower, nodes: int, procs_per_node: int,
    wall_s: float, memory_per_process_bytes: int, intensity_g_per_kwh: float,
) -> EnergyForecast:
    hours = wall_s / 3600
    if device == "cuda":
        watts = gpu_board_power_w(gpu_name or "")
        basis = f"GPU board power of {gpu_name} ({watts:g} W)" if watts else f"no board power known for {gpu_name}"
        return forecast_energy(hours * nodes * procs_per_node, watts, spec.pue_value, intensity_g_per_kwh, basis)
    memory_w = spec.memory_w_per_gib * memory_per_process_bytes * procs_per_node / GiB
    node_w = cpu_load_power_w(cpu.tdp_w, 1.0) + memory_w
    basis = f"per node: CPU at full load {cpu.tdp_w:g} W ({cpu.source}) + memory {memory_w:.1f} W"
    return forecast_energy(hours * nodes, node_w, spec.pue_value, intensity_g_per_kwh, basis)


@dataclass(frozen=True)
class EnergyPlan:
    """What the ranks and the bill need, resolved once by the planner and written into plan.json."""

    pue: float
    intensity: Intensity
    cpu: CpuPower
    forecast: EnergyForecast

    def summary(self) -> dict:
        return {"pue": self.pue, "intensity": self.intensity.summary(with_series=True), "cpu": asdict(self.cpu),
                "forecast": self.forecast.summary()}
