"""`orch show RUN_DIR`: one run in detail, from its directory alone."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.rundir import RunDir
from orchestrator.status import run_status


def describe_run(run_dir: Path) -> str:
    from orchestrator.checkpoint import store
    from orchestrator.checkpoint.listing import checkpoint_root

    status = run_status(run_dir)
    run = RunDir(run_dir)
    plan = run.read_json(run.plan.name)
    t, b = plan["topology"], plan["batch"]
    lines = [
        status.line(),
        f"task           {status.task}, {plan['model']['arch']} {plan['model']['num_params'] / 1e6:.2f}M parameters, recipe hash {plan['recipe_hash']}",
        f"backend        {plan['backend']}, {t['nodes']} node(s) x {t['procs_per_node']} = world size {t['world_size']} on {t['device']} ({t['comm_backend']})",
        f"batch          micro {b['micro_batch_size']} x accumulation {b['gradient_accumulation_steps']} x data-parallel {b['data_parallel']}"
        f" = {b['global_batch_size']} sequences, {b['tokens_per_step']:,} tokens/step",
    ]
    rows = run.metric_rows()
    if rows:
        last = rows[-1]
        val = next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None)
        lines.append(f"latest         step {last['step']}: loss {last['loss']:.4f}" + (f", val loss {val:.4f}" if val is not None else "")
                     + f", {last['tokens_per_s']:,.0f} tokens/s, lr {last['lr']:.3g}")
    if run.summary.exists():
        summary = run.read_json(run.summary.name)
        lines.append(f"summary        {summary['steps']} steps in {summary['wall_s']:.0f} s, goodput {summary['goodput']:.0%}, "
                     f"median {summary['tokens_per_s']:,.0f} tokens/s, MFU {summary['mfu']:.1%}")
    checkpoints = store.committed(checkpoint_root(run.path))
    lines.append(f"checkpoints    {len(checkpoints)}" + (f", newest {checkpoints[0].name} ({checkpoints[0]})" if checkpoints else ""))
    energy = run.path / "energy.json"
    if energy.exists():
        e = json.loads(energy.read_text())["totals"]
        lines.append(f"energy         {e['facility_kwh'] * 1000:.4g} Wh, {e['kgco2e'] * 1000:.4g} gCO2e, coverage {e['coverage']:.0%} "
                     f"(orch energy {run_dir})")
    for report in sorted((run.path / "gates").glob("step-*.json")):
        r = json.loads(report.read_text())
        failed = [g["name"] for g in r["results"] if g["required"] and g["status"] not in ("pass", "warn")]
        lines.append(f"gates          {r['checkpoint']}: {'passed' if r['passed'] else 'failed: ' + ', '.join(failed)}")
    for release in sorted((run.path / "releases").glob("*/release.json")):
        lines.append(f"release        {release.parent}")
    tracking = run.path / "tracking.json"
    if tracking.exists():
        ids = json.loads(tracking.read_text())["ids"]
        lines += [f"dashboard      {key} {value}" for key, value in ids.items()]
    return "\n".join(lines)
