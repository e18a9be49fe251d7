"""The plan as text a person reads: the arithmetic, the memory, the commands, the config."""

from __future__ import annotations

import json
import shlex

import yaml

from orchestrator.shared.data.prepared import Manifest
from orchestrator.plan.planner import LaunchPlan

GiB = 2**30


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


def _estimate_lines(plan: LaunchPlan) -> list[str]:
    """The forecast with its range and what it rests on: earlier runs' measurements, or an assumption."""
    e, device = plan.time, plan.topology.device.replace("cuda", "GPU")
    if not e.wall_s:
        return [f"estimate       {e.basis}"]
    likely = f" (likely {_duration(e.wall_s_range[0])}-{_duration(e.wall_s_range[1])})" if e.wall_s_range and e.wall_s_range[0] < e.wall_s_range[1] else ""
    return [f"estimate       {e.tokens_per_s:,.0f} tokens/s -> wall {_duration(e.wall_s)}{likely}, {e.device_hours:.3f} {device}-hours",
            f"               {e.basis}" + (f"; peak {e.peak_flops_per_device / 1e12:.3f} TFLOP/s per device" if e.peak_flops_per_device else "")]


def _energy_lines(plan: LaunchPlan) -> list[str]:
    energy = plan.energy
    f, spec = energy.forecast, plan.recipe.energy
    intensity = f"{energy.intensity.g_per_kwh:.0f} gCO2e/kWh ({energy.intensity.basis}: {energy.intensity.source})"
    if f.kwh is None:
        forecast = f"unknown ({f.basis}); {f.device_hours:.3f} device-hours"
    else:
        unit = "GPU-hours" if plan.topology.device == "cuda" else "node-hours"
        likely = f" (likely {f.kwh_range[0]:.4g}-{f.kwh_range[1]:.4g})" if f.kwh_range and f.kwh_range[0] < f.kwh_range[1] else ""
        forecast = (f"{f.kwh:.4g} kWh{likely} IT x PUE {energy.pue:g} = {f.facility_kwh:.4g} kWh -> {f.kgco2e:.4g} kgCO2e"
                    f" ({f.device_hours:.4g} {unit} x {f.power_per_device_w:.4g} W; {f.basis})")
    lines = [f"energy         {forecast}", f"grid           {intensity}"]
    if not spec.enabled:
        lines.append("energy         monitor off (energy.enabled: false): no bill will be written")
    budgets = [f"{spec.budget_kwh:g} kWh" if spec.budget_kwh else "", f"{spec.budget_kgco2e:g} kgCO2e" if spec.budget_kgco2e else ""]
    if any(budgets):
        lines.append(f"budget         {' and '.join(b for b in budgets if b)}: warn at {spec.budget_warn_fraction:.0%}, stop with a checkpoint when exceeded")
    return lines


def _activation_lines(plan: LaunchPlan) -> list[str]:
    """Both figures, when the activations are what decides whether the run fits."""
    m = plan.memory
    if not m.activations_dominate:
        return []
    on = plan.recipe.train.activation_checkpointing
    other = m.total_bytes - m.activations_bytes + m.activations_other_bytes
    return [f"activations    {_gib(m.activations_bytes)} {'with' if on else 'without'} activation checkpointing; "
            f"{_gib(m.activations_other_bytes)} {'without' if on else 'with'} it (train.activation_checkpointing: {str(not on).lower()}),"
            f" total {_gib(other)}"]


def _host_line(plan: LaunchPlan) -> str:
    h = plan.host_memory
    built = "partition + one layer" if h.partitioned else "whole model"
    construction = (f"{h.procs_per_node} rank(s) x {_gib(h.construction_bytes)} ({built}) while building" if h.construction_bytes
                    else "model built on the device")
    return (f"host/node      {construction}" + (f" + offload {h.procs_per_node} x {_gib(h.offload_bytes)}" if h.offload_bytes else "")
            + f" = {_gib(h.per_node_bytes)} of {_gib(h.capacity_bytes)}" + ("" if h.fits else "  WILL NOT FIT"))


def _source_lines(plan: LaunchPlan, prepared: Manifest | None) -> list[str]:
    """Each source's share of the run's tokens and, once prepared, how many epochs of it that is."""
    sources = plan.recipe.data.mixture()
    total_weight = sum(s.weight for s in sources)
    run_tokens = plan.batch.tokens_per_step * plan.recipe.train.steps
    have = {s.name: s.train_tokens for s in prepared.sources} if prepared else {}
    lines = []
    for source in sources:
        share = source.weight / total_weight
        line = f"data           {source.label}: {share:.0%} of samples, {run_tokens * share:,.0f} tokens over the run"
        if source.label in have:
            line += f"; {have[source.label]:,} prepared = {run_tokens * share / max(1, have[source.label]):.2f} epochs"
        else:
            line += " (epochs once prepared: orch prepare)"
        lines.append(line)
    return lines


def render_plan(plan: LaunchPlan, prepared: Manifest | None = None) -> str:
    """`prepared`: the manifest of the recipe's data when it is already prepared (`orch prepare`),
    for each source's epochs over the run."""
    t, b, m, e = plan.topology, plan.batch, plan.memory, plan.time
    recipe = plan.recipe
    dist = recipe.distributed
    lines = [
        f"run            {recipe.name}{' (dry run)' if plan.dry_run else ''}  ->  {plan.run_dir}",
        f"recipe hash    {plan.recipe_hash}",
        f"backend        {dist.backend}, ZeRO stage {dist.zero_stage}"
        + (", optimizer offload" if dist.offload_optimizer else "") + (", parameter offload" if dist.offload_params else ""),
        f"topology       {t.nodes} node(s) x {t.procs_per_node} process(es) = world size {t.world_size} on {t.device} ({t.comm_backend})",
        f"batch          micro {b.micro_batch_size} x accumulation {b.gradient_accumulation_steps} x data-parallel {b.data_parallel}"
        f" = global {b.global_batch_size} sequences",
        f"tokens         {b.global_batch_size} x {b.seq_len} = {b.tokens_per_step:,} per step; {b.tokens_per_step * recipe.train.steps:,} over {recipe.train.steps} steps",
        *_source_lines(plan, prepared),
        f"model          {plan.arch}, {plan.num_params / 1e6:.2f}M parameters, {e.flops_per_token / 1e6:.1f} MFLOP/token (training)"
        + (f"; from {recipe.model.path}" if recipe.model.path else "")
        + (f"; LoRA rank {recipe.model.lora.rank} on {', '.join(recipe.model.lora.target_modules)}" if recipe.model.lora else ""),
        f"precision      {recipe.train.precision}",
        "memory/device  "
        f"params {_gib(m.params_bytes)} + grads {_gib(m.grads_bytes)} + optimizer {_gib(m.optimizer_bytes)}"
        + (f" + ZeRO-3 gather {_gib(m.gather_buffer_bytes)}" if m.gather_buffer_bytes else "")
        + f" + activations {_gib(m.activations_bytes)} = {_gib(m.total_bytes)} of {_gib(m.capacity_bytes)}"
        + (f"; host offload {_gib(m.host_offload_bytes)}" if m.host_offload_bytes else "")
        + ("" if m.fits else "  WILL NOT FIT"),
        *_activation_lines(plan),
        _host_line(plan),
    ]
    lines += _estimate_lines(plan)
    lines += _energy_lines(plan)
    lines += [f"warning        {w}" for w in plan.warnings]
    lines.append("")
    lines.append("launch")
    for process in plan.processes:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in process.env.items())
        lines.append(f"  {env} {shlex.join(process.argv)}")
    for name, content in plan.backend_files.items():
        lines += ["", name, json.dumps(content, indent=2)]
    lines += ["", "resolved recipe", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False).rstrip()]
    return "\n".join(lines)
