"""The `orch` command line: each command parses, calls one library function, and prints.

Heavy libraries (torch, deepspeed, transformers) are never imported here, so `orch --help`,
`validate` and `plan` answer quickly; only the processes `run` starts import them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.checkpoint.export import ExportDtype
from orchestrator.errors import GatesFailed, OrchestratorError, ReleaseRefused, ResumeError, SlurmError

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-pretrain.yaml"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a declarative recipe into a real distributed training run (DeepSpeed ZeRO), locally or on Slurm.",
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="Overrides in dotted form, e.g. train.steps=50 distributed.zero_stage=3.", show_default=False)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="One process, a few steps: the smoke test before a big job.")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default runs/<name>).")]


def _fail(exc: OrchestratorError) -> typer.Exit:
    for line in exc.lines():
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
    return typer.Exit(exc.exit_code)


def _load_and_plan(
    recipe: Path, overrides: list[str] | None, run_dir: Path | None = None, dry_run: bool = False, measure_cpu: bool = True,
    load_universal: bool = False,
):
    from orchestrator.env import probe
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    return loaded, make_plan(loaded, probe(measure_cpu=measure_cpu), run_dir=run_dir, dry_run=dry_run, load_universal=load_universal)


@app.command()
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (schema, cross-field rules, batch arithmetic against this machine); exit 0 or 1."""
    try:
        loaded, _ = _load_and_plan(recipe, overrides, measure_cpu=False)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(f"{recipe}: valid ({loaded.recipe.name}, hash {loaded.hash})")


@app.command()
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    dry_run: DryRunOpt = False,
    for_slurm: Annotated[bool, typer.Option("--slurm", help="Plan for the Slurm nodes the recipe asks for and print the sbatch script.")] = False,
) -> None:
    """Show what a run would do: topology, batch arithmetic, memory per device, estimates, commands, DeepSpeed config."""
    from orchestrator.env import probe
    from orchestrator.plan.planner import make_plan
    from orchestrator.plan.render import render_plan
    from orchestrator.recipe.loader import load_recipe
    from orchestrator.slurm.submit import cluster_env, render

    try:
        loaded = load_recipe(recipe, overrides or [])
        env = probe(measure_cpu=not for_slurm)
        launch_plan = make_plan(loaded, cluster_env(env, loaded.recipe.slurm) if for_slurm else env, dry_run=dry_run)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(json.dumps(launch_plan.summary(), indent=2) if as_json else render_plan(launch_plan))
    if for_slurm:
        typer.echo("\n" + render(launch_plan, env.python), nl=False)


@app.command()
def submit(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    run_dir: RunDirOpt = None,
    emit_only: Annotated[bool, typer.Option("--emit-only", help="Print the sbatch script; submit nothing.")] = False,
    skip_doctor: Annotated[bool, typer.Option("--skip-doctor", help="Skip the pre-flight checks.")] = False,
) -> None:
    """Submit the recipe as a Slurm job (one launcher per node via srun); records the job id in the run directory."""
    from orchestrator.env import probe
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe
    from orchestrator.slurm.doctor import render_checks, run_checks
    from orchestrator.slurm.submit import cluster_env, render, submit as submit_job

    try:
        loaded = load_recipe(recipe, overrides or [])
        env = probe(measure_cpu=False)
        launch_plan = make_plan(loaded, cluster_env(env, loaded.recipe.slurm), run_dir=run_dir)
        if emit_only:
            typer.echo(render(launch_plan, env.python), nl=False)
            return
        if not skip_doctor:
            checks = run_checks(launch_plan)
            if not all(c.ok for c in checks):
                typer.echo(render_checks(checks), err=True)
                raise SlurmError("pre-flight checks failed (see the table above); nothing was submitted")
        job_id = submit_job(launch_plan, env.python, list(loaded.sources))
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(f"submitted job {job_id}; run directory {launch_plan.run_dir}; follow with: orch status {launch_plan.run_dir}")


@app.command()
def doctor(recipe: RecipeArg, overrides: OverridesArg = None, run_dir: RunDirOpt = None) -> None:
    """Pre-flight checks: Slurm controller and partition, writable directories, free space for checkpoints, write speed; inside an allocation also all-reduce bandwidth and GPU health."""
    from orchestrator.env import probe
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe
    from orchestrator.slurm.doctor import render_checks, run_checks
    from orchestrator.slurm.submit import cluster_env

    try:
        loaded = load_recipe(recipe, overrides or [])
        plan_ = make_plan(loaded, cluster_env(probe(measure_cpu=False), loaded.recipe.slurm), run_dir=run_dir)
        checks = run_checks(plan_, allocation={k: v for k, v in os.environ.items() if k.startswith("SLURM_")})
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(render_checks(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)



@app.command()
def status(
    run_dir: RunDirArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing progress (bar with ETA, loss, tokens/s) until the run ends; Ctrl-C to stop watching.")] = False,
) -> None:
    """State (from Slurm for submitted runs), current step and loss, restarts."""
    from orchestrator.status import run_status

    try:
        if follow:
            from orchestrator.progress import follow_run

            follow_run(run_dir, sys.stderr.isatty())
        typer.echo(run_status(run_dir).line())
    except OrchestratorError as exc:
        raise _fail(exc)


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
    state: Annotated[Optional[str], typer.Option("--state", help="Only runs in this state (e.g. COMPLETED, RUNNING).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Only runs whose name contains this.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Only pretrain or finetune runs.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Only deepspeed or horovod runs.")] = None,
) -> None:
    """A table of the runs under a directory: name, task, backend, nodes, state, step, loss, energy, gates, Slurm job."""
    from orchestrator.status import find_runs, matches

    filters = {"state": state, "name": name, "task": task, "backend": backend}
    rows = [r for r in find_runs(root) if matches(r, filters)]
    if not rows:
        typer.echo(f"no runs under {root}" + (" match" if any(filters.values()) else ""))
        return
    typer.echo(f"{'name':<24} {'task':<8} {'backend':<9} {'nodes':>5} {'state':<12} {'step':>11} {'loss':>8} {'energy':>11} {'gates':<14} {'job':>6}  run directory")
    for r in rows:
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        energy = f"{r.energy_kwh * 1000:.3g} Wh" if r.energy_kwh is not None else "-"
        typer.echo(f"{r.name[:24]:<24} {r.task:<8} {r.backend:<9} {r.nodes:>5} {r.state[:12]:<12} {f'{r.step}/{r.steps}':>11} {loss:>8} "
                   f"{energy:>11} {r.gates:<14} {r.job_id or '-':>6}  {r.run_dir}")


@app.command()
def show(run_dir: RunDirArg) -> None:
    """One run in detail: state, plan, latest metrics, checkpoints, energy, gates, releases, dashboards."""
    from orchestrator.show import describe_run

    try:
        typer.echo(describe_run(run_dir))
    except OrchestratorError as exc:
        raise _fail(exc)


@app.command()
def report(
    run_dir: RunDirArg,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default <run>/report.html).")] = None,
) -> None:
    """A self-contained HTML report: loss, validation loss, LR, throughput, energy per node, checkpoint stalls, gates."""
    from orchestrator.report import render_report

    try:
        page = render_report(run_dir)
    except OrchestratorError as exc:
        raise _fail(exc)
    target = out or run_dir / "report.html"
    target.write_text(page)
    typer.echo(f"wrote {target}")


@app.command()
def logs(
    run_dir: RunDirArg,
    rank: Annotated[int, typer.Option("--rank", help="Which rank's log.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing as the log grows.")] = False,
) -> None:
    """Print a rank's log."""
    import time

    path = run_dir / "logs" / f"rank-{rank}.log"
    if not path.exists():
        raise _fail(OrchestratorError(f"no log for rank {rank} in {run_dir / 'logs'}"))
    with path.open(errors="replace") as log:
        while True:
            chunk = log.read()
            if chunk:
                typer.echo(chunk, nl=False)
            elif not follow:
                return
            else:
                time.sleep(0.5)


@app.command()
def cancel(run_dir: RunDirArg) -> None:
    """Cancel the run's Slurm job."""
    from orchestrator.rundir import RunDir
    from orchestrator.slurm.client import slurm
    from orchestrator.slurm.submit import job_ids

    jobs = job_ids(RunDir(run_dir))
    try:
        if not jobs:
            raise SlurmError(f"{run_dir} has no Slurm job (slurm.json missing)")
        slurm("scancel", jobs[-1])
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(f"cancelled job {jobs[-1]}")


@app.command()
def run(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe YAML file (default: the built-in tiny recipe).", show_default=False)] = None,
    overrides: OverridesArg = None,
    run_dir: RunDirOpt = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its newest verified checkpoint.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Set an existing run directory aside and start over.")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Train locally: all processes of this node, with a live progress bar; re-running continues from the newest verified checkpoint."""
    from orchestrator.checkpoint.resume import check_resume, set_run_aside
    from orchestrator.execute import SubprocessRunner, launch, prepare_run
    from orchestrator.progress import ProgressView

    overrides = list(overrides or [])
    if recipe is None or "=" in recipe:
        overrides = ([recipe] if recipe else []) + overrides
        recipe = str(DEFAULT_RECIPE)
    try:
        if resume is not None and not resume.is_dir():
            raise ResumeError(f"--resume {resume}: no such run directory")
        loaded, launch_plan = _load_and_plan(Path(recipe), overrides, run_dir=resume or run_dir, dry_run=dry_run)
        if fresh and launch_plan.run_dir.exists():
            typer.echo(f"set aside the previous run as {set_run_aside(launch_plan.run_dir)}")
        manifest, safe = check_resume(launch_plan.checkpoint_dir, launch_plan.recipe.model_dump(mode="json"), launch_plan.topology.world_size)
        if resume is not None and manifest is None:
            raise ResumeError(f"--resume {resume}: it has no committed checkpoint to continue from")
        if manifest and manifest["world_size"] != launch_plan.topology.world_size:
            from orchestrator.checkpoint.elastic import prepare_elastic_resume

            record = prepare_elastic_resume(launch_plan.run_dir, launch_plan.checkpoint_dir, launch_plan.topology.world_size)
            if record["converted"]:
                typer.echo(f"converted {record['tag']} (world size {record['from_world_size']}) to a universal checkpoint")
            else:
                typer.echo(f"resuming {record['tag']} (saved at world size {record['from_world_size']}) at world size {record['to_world_size']}")
            loaded, launch_plan = _load_and_plan(Path(recipe), overrides, run_dir=launch_plan.run_dir, dry_run=dry_run, load_universal=True)
        t = launch_plan.topology
        typer.echo(f"{launch_plan.recipe.name}: {t.world_size} process(es) on {t.device}, run directory {launch_plan.run_dir}")
        if manifest:
            typer.echo(f"resuming after step {manifest['step']}" + (f" with changes: {'; '.join(safe)}" if safe else ""))
        run_directory = prepare_run(launch_plan, list(loaded.sources))
        with ProgressView(launch_plan.recipe.train.steps, sys.stderr.isatty()) as view:
            outcome = launch(launch_plan, run_directory, SubprocessRunner(), view.update)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(ProgressView.describe_summary(outcome.summary or {}, outcome.run_dir))


RunDirArg = Annotated[Path, typer.Argument(help="Run directory (as given to or printed by `orch run`).", show_default=False)]


@app.command()
def checkpoints(
    run_dir: RunDirArg,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file against its content hash (reads them all).")] = True,
) -> None:
    """List a run's checkpoints, newest first, and whether each verifies.

    Step, tokens, size, world size, ZeRO stage, commit time, which one `latest` points to; then the
    checkpoints set aside, with the reason."""
    from orchestrator.checkpoint.listing import list_checkpoints, render_listing

    try:
        listing = list_checkpoints(run_dir, verify=verify)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(render_listing(listing))


@app.command()
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

    try:
        result = export_checkpoint(run_dir, step=step, out=out, dtype=dtype)
    except OrchestratorError as exc:
        raise _fail(exc)
    size = sum(p.stat().st_size for p in result.out.glob("*.safetensors"))
    typer.echo(f"exported {result.checkpoint.name} (step {result.step}, verified) -> {result.out}")
    typer.echo(f"  {result.num_params:,} parameters, {result.dtype}, {human_bytes(size)} of safetensors; weights from {result.weights_from}")


@app.command()
def energy(
    run_dir: RunDirArg,
    as_json: Annotated[bool, typer.Option("--json", help="The bill as JSON (the content of energy.json).")] = False,
) -> None:
    """A run's energy and carbon bill: per node and device with each figure's method, totals, phases,
    energy lost to failures, and the plan's forecast beside it. Works during a run too."""
    from orchestrator.energy.account import bill_for
    from orchestrator.energy.report import render_bill

    try:
        bill = bill_for(run_dir)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(json.dumps(bill, indent=2) if as_json else render_bill(bill))


CheckpointOpt = Annotated[Optional[int], typer.Option("--checkpoint", help="The checkpoint's step (default: the newest that verifies).")]


@app.command()
def gate(
    run_dir: RunDirArg,
    checkpoint: CheckpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON (as written to gates/<checkpoint>.json).")] = False,
) -> None:
    """Evaluate the recipe's gates on one checkpoint (quality, health, memorisation, contamination,
    content, bias, budget); exit 4 when a required gate fails."""
    from orchestrator.gates.evaluate import evaluate_gates, render_report

    try:
        report = evaluate_gates(run_dir, checkpoint)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(json.dumps(report, indent=2) if as_json else render_report(report))
    if not report["passed"]:
        raise typer.Exit(GatesFailed.exit_code)


@app.command()
def release(
    run_dir: RunDirArg,
    checkpoint: CheckpointOpt = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="Release directory (default <run>/releases/step-NNNNNNNN); must not exist.")] = None,
    register: Annotated[bool, typer.Option("--register", help="Also register it in an MLflow model registry (local store unless MLFLOW_TRACKING_URI is set).")] = False,
) -> None:
    """Publish a checkpoint whose required gates passed (by content hash): model, model card, manifest."""
    from orchestrator.gates.release import release as make_release

    try:
        made = make_release(run_dir, checkpoint, to, register)
    except OrchestratorError as exc:
        raise _fail(exc)
    typer.echo(f"released {made.checkpoint} -> {made.path} ({made.files} files, sha256 in release.json)")
    if made.registered:
        typer.echo(f"registered {made.registered}")


@app.command()
def verify(release_dir: Annotated[Path, typer.Argument(help="A release directory.", show_default=False)]) -> None:
    """Check every file of a release against its manifest (release.json)."""
    from orchestrator.gates.release import RELEASE_FILE, verify_release

    if not (release_dir / RELEASE_FILE).is_file():
        raise _fail(ReleaseRefused(f"{release_dir}: not a release (no {RELEASE_FILE})"))
    problems = verify_release(release_dir)
    for problem in problems:
        typer.secho(f"error: {problem}", err=True, fg=typer.colors.RED)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{release_dir}: every file matches release.json")
