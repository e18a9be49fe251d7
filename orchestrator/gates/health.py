"""Training health from the run's own metrics, up to the checkpoint: finite values, spikes that
recovered, bounded gradient norms, and every rank present in the checkpoint."""

from __future__ import annotations

import math

import numpy as np

from orchestrator.gates.result import GateResult
from orchestrator.gates.spec import HealthGate

DIVERGENCE_MARGIN = 0.1


def loss_spikes(losses: list[float], sigma: float, window: int, recover_steps: int) -> list[dict]:
    """Steps whose loss rose above mean + sigma x std of the `window` steps before (fewer at the start,
    at least 3), and whether the
    loss came back under that band within `recover_steps` (one entry per excursion)."""
    spikes, i = [], 3
    while i < len(losses):
        history = np.asarray(losses[max(0, i - window) : i])
        band = float(history.mean() + sigma * max(history.std(), 1e-3 * abs(history.mean())))
        if losses[i] <= band:
            i += 1
            continue
        after = losses[i + 1 : i + 1 + recover_steps]
        back = next((j for j, value in enumerate(after) if value <= band), None)
        spikes.append({"index": i, "loss": losses[i], "band": band, "recovered": back is not None})
        i += (back if back is not None else len(after)) + 2
    return spikes


def health_gate(spec: HealthGate, rows: list[dict], world_size: int, ranks_in_checkpoint: int) -> GateResult:
    problems = []
    not_finite = [r["step"] for r in rows if any(
        isinstance(r.get(k), float) and not math.isfinite(r[k]) for k in ("loss", "val_loss", "grad_norm")
    )]
    if not_finite:
        problems.append(f"non-finite loss or gradient norm at steps {not_finite[:5]}")
    losses = [r["loss"] for r in rows if math.isfinite(r["loss"])]
    spikes = loss_spikes(losses, spec.spike_sigma, spec.spike_window, spec.recover_steps)
    steps = [r["step"] for r in rows if math.isfinite(r["loss"])]
    unrecovered = [{"step": steps[s["index"]], "loss": s["loss"], "band": s["band"]} for s in spikes if not s["recovered"]]
    if unrecovered:
        problems.append(f"{len(unrecovered)} loss spike(s) beyond {spec.spike_sigma:g} sigma not recovered within {spec.recover_steps} steps "
                        f"(first at step {unrecovered[0]['step']}: {unrecovered[0]['loss']:.3g} > {unrecovered[0]['band']:.3g})")
    if len(losses) >= 2 and losses[-1] > losses[0] * (1 + DIVERGENCE_MARGIN):
        problems.append(f"diverged: the loss rose from {losses[0]:.4g} at the start to {losses[-1]:.4g}")
    norms = [r["grad_norm"] for r in rows if isinstance(r.get("grad_norm"), (int, float)) and math.isfinite(r["grad_norm"])]
    max_norm = max(norms) if norms else None
    if spec.max_grad_norm is not None and max_norm is not None and max_norm > spec.max_grad_norm:
        problems.append(f"gradient norm reached {max_norm:.3g} (bound {spec.max_grad_norm:g})")
    if ranks_in_checkpoint != world_size:
        problems.append(f"the checkpoint holds the state of {ranks_in_checkpoint} of {world_size} ranks")
    evidence = {"steps": len(rows), "spikes": len(spikes), "unrecovered_spikes": unrecovered[:5], "max_grad_norm": max_norm,
                "grad_norm_reported": bool(norms), "ranks_in_checkpoint": ranks_in_checkpoint, "world_size": world_size}
    summary = "; ".join(problems) if problems else (
        f"{len(rows)} steps finite, {len(spikes)} spike(s) all recovered, max grad norm "
        + (f"{max_norm:.3g}" if max_norm is not None else "not reported by this backend") + f", {world_size}/{world_size} ranks"
    )
    return GateResult("health", "fail" if problems else "pass", float(len(problems)), 0.0, summary, evidence)
