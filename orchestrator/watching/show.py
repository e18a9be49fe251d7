"""`orch show RUN_DIR`: one run in detail, from its directory alone."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import DamagedRun
from orchestrator.gates.outcome import GateReport
from orchestrator.watching.progress import wall_time
from orchestrator.rundir.bill import read_bill
from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RELEASE_MANIFEST, RunDir, damaged
from orchestrator.shared.data.prepared import TextManifest
from orchestrator.data.summary import curation_line, source_lines
from orchestrator.rundir.records import DataRecord, read_data, read_plan, read_tracking
from orchestrator.rundir.recovery_events import AttemptFailed
from orchestrator.watching.status import run_status


def describe_run(run_dir: Path) -> str:
    """Every file is read through the run directory's readers, which name a damaged file; a file that
    parses but lacks a figure this version writes is named here, in one line."""
    try:
        return _describe(run_dir)
    except (KeyError, TypeError) as exc:
        raise DamagedRun(f"{run_dir}: a file of the run lacks a figure ({exc}): damaged, or written by another version") from None


def _describe(run_dir: Path) -> str:
    from orchestrator.shared.checkpoint import store
    from orchestrator.checkpoint.listing import checkpoint_root

    status = run_status(run_dir)
    run = RunDir(run_dir)
    plan = read_plan(run)
    t, b = plan.topology, plan.batch
    lines = [
        status.line(),
        f"task           {status.task}, {plan.model.arch} {plan.model.num_params / 1e6:.2f}M parameters, recipe hash {plan.recipe_hash}",
        f"backend        {plan.backend}, {t.nodes} node(s) x {t.procs_per_node} = world size {t.world_size} on {t.device} ({t.comm_backend})",
        f"batch          micro {b.micro_batch_size} x accumulation {b.gradient_accumulation_steps} x data-parallel {b.data_parallel}"
        f" = {b.global_batch_size} sequences, {b.tokens_per_step:,} tokens/step",
    ]
    if run.data.exists():
        lines += _data_lines(read_data(run))
    rows = [row for row in run.metric_rows() if "loss" in row]
    if rows:
        last = rows[-1]
        val = next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None)
        lines.append(f"latest         step {last['step']}: loss {last['loss']:.4f}" + (f", val loss {val:.4f}" if val is not None else "")
                     + f", {last['tokens_per_s']:,.0f} tokens/s, lr {last['lr']:.3g}")
    lines += [f"failure        {event.describe()}" for event in run.history() if isinstance(event, AttemptFailed)]
    summary = read_summary(run)
    if summary is not None:
        lines.append(f"summary        {summary.steps} steps in {wall_time(summary)}, goodput {summary.goodput:.0%}, "
                     f"median {summary.tokens_per_s:,.0f} tokens/s, MFU {summary.mfu:.1%}")
    checkpoints = store.committed(checkpoint_root(run.path))
    lines.append(f"checkpoints    {len(checkpoints)}" + (f", newest {checkpoints[0].name} ({checkpoints[0]})" if checkpoints else ""))
    bill = read_bill(run)
    if bill:
        e = bill.totals
        lines.append(f"energy         {e.facility_kwh * 1000:.4g} Wh, {e.kgco2e * 1000:.4g} gCO2e, coverage {e.coverage:.0%} "
                     f"(orch energy {run_dir})")
    for path in run.gate_reports():
        try:
            report = GateReport.read(path)
        except ValueError as exc:
            raise damaged(path, exc) from None
        lines.append(f"gates          {report.checkpoint}: {report.verdict()}")
    for release in sorted(run.releases.glob(f"*/{RELEASE_MANIFEST}")):
        lines.append(f"release        {release.parent}")
    lines += [f"dashboard      {key} {value}" for key, value in read_tracking(run).ids.items()]
    return "\n".join(lines)


def _data_lines(data: DataRecord) -> list[str]:
    """The prepared data's tokens and, for data prepared with curation, what it removed."""
    manifest = data.manifest
    lines = [f"data           {manifest.train_tokens:,} training tokens, {manifest.val_tokens:,} validation, "
             f"vocabulary {manifest.vocab_size:,} ({data.dir})"]
    if len(manifest.sources) > 1:
        lines += [f"  source       {line}" for line in source_lines(manifest)]
    elif isinstance(manifest, TextManifest):
        lines.append(f"curation       {curation_line(manifest.curation)}")
    return lines

