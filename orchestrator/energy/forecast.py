"""The energy and carbon a run will cost, from the plan's time estimate, before it starts.

The arithmetic is the one published training reports use: device-hours x power per device x PUE
x grid intensity. On GPUs it counts the GPUs' board power (the host's CPUs are not known to the
planner); on CPUs it counts each node's CPU at full load plus its memory in use.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.shared.energy.grid import Intensity
from orchestrator.shared.energy.hardware import CpuPower, cpu_load_power_w, gpu_board_power_w
from orchestrator.energy.spec import EnergySpec
from orchestrator.rundir.records import EnergyForecast

GiB = 2**30


def forecast_energy(
    device_hours: float, power_per_device_w: float | None, pue: float, intensity_g_per_kwh: float, basis: str,
    hours_range: tuple[float, float] | None = None,
) -> EnergyForecast:
    """kWh = device-hours x kW per device; kgCO2e = kWh x PUE x g/kWh / 1000."""
    if power_per_device_w is None:
        return EnergyForecast(device_hours=device_hours, power_per_device_w=None, kwh=None, facility_kwh=None, kgco2e=None, basis=basis)
    kwh = device_hours * power_per_device_w / 1000
    kwh_range = tuple(hours * power_per_device_w / 1000 for hours in hours_range) if hours_range else None
    return EnergyForecast(device_hours=device_hours, power_per_device_w=power_per_device_w, kwh=kwh, facility_kwh=kwh * pue,
                          kgco2e=kwh * pue * intensity_g_per_kwh / 1000, basis=basis, kwh_range=kwh_range)


@dataclass(frozen=True)
class EnergyRequest:
    """What the forecast needs of the plan: where it runs, for how long, and what earlier runs of
    the same shape on the same hardware were billed (`measured_w`, per GPU or per node)."""

    device: str
    gpu_name: str | None
    cpu: CpuPower
    nodes: int
    procs_per_node: int
    wall_s: float
    wall_s_range: tuple[float, float] | None
    memory_per_process_bytes: int
    memory_in_use_bytes: int = 0
    """What the machine's other work holds now: the CPU meter bills all memory in use, not the run's alone."""
    measured_w: float | None = None


def plan_forecast(spec: EnergySpec, request: EnergyRequest, intensity_g_per_kwh: float) -> EnergyForecast:
    r = request
    if not r.wall_s:
        return forecast_energy(0.0, None, spec.pue_value, intensity_g_per_kwh, "no time estimate to forecast from")
    units = r.nodes * r.procs_per_node if r.device == "cuda" else r.nodes
    hours = r.wall_s / 3600 * units
    hours_range = tuple(s / 3600 * units for s in r.wall_s_range) if r.wall_s_range else None
    unit = "GPU" if r.device == "cuda" else "node"
    if r.measured_w is not None:
        basis = f"billed power of earlier runs of this shape on this hardware ({r.measured_w:.4g} W per {unit})"
        return forecast_energy(hours, r.measured_w, spec.pue_value, intensity_g_per_kwh, basis, hours_range)
    if r.device == "cuda":
        watts = gpu_board_power_w(r.gpu_name or "")
        basis = f"GPU board power of {r.gpu_name} ({watts:g} W)" if watts else f"no board power known for {r.gpu_name}"
        return forecast_energy(hours, watts, spec.pue_value, intensity_g_per_kwh, basis, hours_range)
    memory_gib = (r.memory_in_use_bytes + r.memory_per_process_bytes * r.procs_per_node) / GiB
    memory_w = spec.memory_w_per_gib * memory_gib
    node_w = cpu_load_power_w(r.cpu.tdp_w, 1.0) + memory_w
    held = f"{memory_gib:.1f} GiB in use with this run's" if r.memory_in_use_bytes else "this run's"
    basis = f"per node: CPU at full load {r.cpu.tdp_w:g} W ({r.cpu.source}) + memory {memory_w:.1f} W ({held})"
    return forecast_energy(hours, node_w, spec.pue_value, intensity_g_per_kwh, basis, hours_range)
