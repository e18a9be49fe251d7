"""`orch energy`: the bill as a table a person reads, every figure with how it was obtained."""

from __future__ import annotations

from orchestrator.rundir.bill import EnergyBill


def _kwh(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value * 1000:.4g} Wh" if value < 1 else f"{value:,.4g} kWh"


def render_bill(bill: EnergyBill) -> str:
    t = bill.totals
    lines = [f"{'node':<12} {'device':<44} {'method':<11} {'seconds':>9} {'energy':>13}  how"]
    for node, entry in bill.nodes.items():
        for d in entry.devices:
            lines.append(f"{node:<12} {d.device:<44} {d.method:<11} {d.seconds:>9.1f} {_kwh(d.kwh):>13}  {d.detail}")
        lines.append(f"{node:<12} {'node total':<44} {'':<11} {'':>9} {_kwh(entry.kwh):>13}")
    intensity = t.intensity
    lines += [
        "",
        f"total          {_kwh(t.kwh)} IT: measured {_kwh(t.measured_kwh)}, estimated {_kwh(t.estimated_kwh)}; "
        f"counter coverage {t.coverage:.0%} of device-seconds",
        f"facility       x PUE {t.pue:g} = {_kwh(t.facility_kwh)}",
        f"carbon         {t.kgco2e * 1000:.3f} gCO2e at {intensity.g_per_kwh:.1f} g/kWh ({intensity.basis}: {intensity.source})",
    ]
    if t.market_kgco2e is not None:
        lines.append(f"market-based   {t.market_kgco2e * 1000:.3f} gCO2e at {intensity.market_based_g_per_kwh:g} g/kWh (supplied by the user)")
    for missing in t.missing:
        lines.append(f"missing        {missing.node} {missing.device}: {missing.reason} (not counted, not zero)")
    if t.j_per_token is not None:
        lines.append(f"per unit       {t.j_per_token:.4g} J/token, {t.j_per_step:.4g} J/step over {t.steps} steps, {t.tokens:,} tokens")
    if t.gpu_hours:
        lines.append(f"GPU-hours      {t.gpu_hours:.3f}")
    phases = ", ".join(f"{name} {_kwh(kwh)}" for name, kwh in bill.phases_kwh.items())
    lines.append(f"phases         {phases}")
    failures = bill.failures_kwh
    lines.append(f"failures       {_kwh(failures.lost)} lost over {bill.attempts} attempt(s): "
                 f"recomputed steps {_kwh(failures.recomputed)}, restarts {_kwh(failures.restart)}")
    if bill.forecast_kwh:
        lines.append(f"forecast       {_kwh(bill.forecast_kwh)} IT planned; bill / forecast = {t.kwh / bill.forecast_kwh:.2f}")
    return "\n".join(lines)
