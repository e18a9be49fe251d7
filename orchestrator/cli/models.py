"""Commands that turn a run's checkpoint into a model others may use: export, gate, release, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.checkpoint.export import ExportDtype
from orchestrator.cli.app import CheckpointOpt, RunDirArg, command
from orchestrator.errors import EXIT_GATES_FAILED


@command
def export(
    run_dir: RunDirArg,
    step: Annotated[Optional[int], typer.Option("--step", help="Export this step's checkpoint (default: the newest that verifies).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default <run>/export/step-NNNNNNNN).")] = None,
    dtype: Annotated[ExportDtype, typer.Option("--dtype", help="Weight precision of the exported model.")] = ExportDtype.fp32,
) -> None:
    """Write a verified checkpoint as a Hugging Face model directory.

    safetensors weights, config and the run's tokenizer, loadable with
    AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT)."""
    from orchestrator.checkpoint.export import export_checkpoint
    from orchestrator.checkpoint.listing import human_bytes

    result = export_checkpoint(run_dir, step=step, out=out, dtype=dtype)
    size = sum(p.stat().st_size for p in result.out.glob("*.safetensors"))
    typer.echo(f"exported {result.checkpoint.name} (step {result.step}, verified) -> {result.out}")
    typer.echo(f"  {result.num_params:,} parameters, {result.dtype}, {human_bytes(size)} of safetensors; weights from {result.weights_from}")


@command
def gate(
    run_dir: RunDirArg,
    checkpoint: CheckpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON (as written to gates/<checkpoint>.json).")] = False,
) -> None:
    """Evaluate the recipe's gates on one checkpoint (quality, health, memorisation, contamination,
    content, bias, evaluation, robustness, budget); exit 4 when a required gate fails."""
    from orchestrator.gates.evaluate import evaluate_gates, render_gate_table

    report = evaluate_gates(run_dir, checkpoint)
    typer.echo(report.model_dump_json(indent=2) if as_json else render_gate_table(report))
    if not report.passed:
        raise typer.Exit(EXIT_GATES_FAILED)


@command
def release(
    run_dir: RunDirArg,
    checkpoint: CheckpointOpt = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="Release directory (default <run>/releases/step-NNNNNNNN); must not exist.")] = None,
    register: Annotated[bool, typer.Option("--register", help="Also register it in an MLflow model registry (local store unless MLFLOW_TRACKING_URI is set).")] = False,
) -> None:
    """Publish a checkpoint whose required gates passed (by content hash): model, model card, manifest."""
    from orchestrator.release.publish import release as make_release

    made = make_release(run_dir, checkpoint, to, register)
    typer.echo(f"released {made.checkpoint} -> {made.path} ({made.files} files, sha256 in release.json)")
    if made.registered:
        typer.echo(f"registered {made.registered}")


@command
def verify(release_dir: Annotated[Path, typer.Argument(help="A release directory.", show_default=False)]) -> None:
    """Check a release against its manifest (release.json): every file, nothing added, no links; exit 6 if not."""
    from orchestrator.release.integrity import verify_release

    manifest = verify_release(release_dir)
    typer.echo(f"{release_dir}: all {len(manifest.files)} files match release.json")
