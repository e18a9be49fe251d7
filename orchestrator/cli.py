"""The `orch` command line: each command parses, calls one library function, and prints.

Heavy libraries (torch, deepspeed, transformers) are never imported here, so `orch --help`,
`validate` and `plan` answer quickly; only the processes `run` starts import them.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from orchestrator.checkpoint.export import ExportDtype
from orchestrator.errors import EXIT_FAILURE, EXIT_GATES_FAILED, OrchestratorError, SlurmError

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
RunDirArg = Annotated[Path, typer.Argument(help="Run directory (as given to or printed by `orch run`).", show_default=False)]
ThenOpt = Annotated[Optional[str], typer.Option("--then", help="Chain `gate` or `gate,release` after training as Slurm jobs (afterok); a failed gate ends the chain.")]
CheckpointOpt = Annotated[Optional[int], typer.Option("--checkpoint", help="The checkpoint's step (default: the newest that verifies).")]


def main() -> None:
    """The `orch` console script and `python -m orchestrator`.

    A command that loaded torch and transformers (gate, export, release) would spend about 2 s on
    2 cores tearing their modules down at interpreter exit: its files are written and closed by
    then, so the exit hooks libraries registered run, and the process ends without the teardown."""
    try:
        app()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    if "torch" not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _readable_errors(command: Callable) -> Callable:
    """The project's own errors become one red line each and their exit code; any other exception is
    a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OrchestratorError as exc:
            for line in exc.lines():
                typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
            raise typer.Exit(exc.exit_code) from None

    return run


def command(function: Callable) -> Callable:
    """An `orch` subcommand with readable errors."""
    return app.command()(_readable_errors(function))


@command
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (schema, cross-field rules, batch arithmetic against this machine); exit 0 or 1."""
    from orchestrator.plan.load import validate_recipe

    loaded, launch_plan = validate_recipe(recipe, overrides)
    for warning in launch_plan.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"{recipe}: valid ({loaded.recipe.name}, hash {launch_plan.recipe_hash})")


@command
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (the content of plan.json).")] = False,
    dry_run: DryRunOpt = False,
    for_slurm: Annotated[bool, typer.Option("--slurm", help="Plan for the Slurm nodes the recipe asks for and print the sbatch script.")] = False,
) -> None:
    """Show what a run would do: topology, batch arithmetic, memory per device, estimates, commands, DeepSpeed config."""
    from orchestrator.plan.load import load_and_plan
    from orchestrator.plan.render import render_plan
    from orchestrator.rundir.records import plan_json

    from orchestrator.data.prepare import prepared_manifest

    _, launch_plan, env = load_and_plan(recipe, overrides, dry_run=dry_run, for_slurm=for_slurm)
    data = launch_plan.recipe.data
    typer.echo(plan_json(launch_plan.record()) if as_json else render_plan(launch_plan, prepared_manifest(data, launch_plan.recipe.train.seed, launch_plan.data_cache_dir)))
    if for_slurm:
        from orchestrator.slurm.submit import render

        typer.echo("\n" + render(launch_plan, env.python), nl=False)


@command
def prepare(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Processes (default: the recipe's data.workers); the result is the same for any number.")] = None,
) -> None:
    """Prepare the recipe's data into the cache (curate, train the tokenizer, tokenize into shards); `run` and `submit` do it when it is missing."""
    from orchestrator.data.prepare import prepare_data
    from orchestrator.data.summary import describe_preparation
    from orchestrator.hub import work_offline
    from orchestrator.plan.load import load_and_plan

    _, launch_plan, _ = load_and_plan(recipe, overrides, measure_cpu=False)
    work_offline()
    data, manifest = prepare_data(launch_plan.recipe.data, launch_plan.recipe.train.seed, launch_plan.data_cache_dir, workers)
    typer.echo(describe_preparation(data.dir, manifest))


@command
def submit(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    run_dir: RunDirOpt = None,
    emit_only: Annotated[bool, typer.Option("--emit-only", help="Print the sbatch script; submit nothing.")] = False,
    skip_doctor: Annotated[bool, typer.Option("--skip-doctor", help="Skip the pre-flight checks.")] = False,
    then: ThenOpt = None,
) -> None:
    """Submit the recipe as a Slurm job (one launcher per node via srun); records the job id in the run directory."""
    from orchestrator.plan.load import load_and_plan
    from orchestrator.slurm.submit import parse_then, render, submit as submit_job

    steps = parse_then(then)
    loaded, launch_plan, env = load_and_plan(recipe, overrides, run_dir=run_dir, for_slurm=True)
    if emit_only:
        typer.echo(render(launch_plan, env.python), nl=False)
        return
    if not skip_doctor:
        _preflight(launch_plan)
    jobs = submit_job(launch_plan, env.python, list(loaded.sources), steps)
    _say_submitted(jobs, ["prepare"] * (len(jobs) - 1 - len(steps)) + ["train", *steps])
    typer.echo(f"run directory {launch_plan.run_dir}; follow with: orch status {launch_plan.run_dir}")


def _preflight(launch_plan) -> None:
    from orchestrator.slurm.doctor import render_checks, run_checks

    checks = run_checks(launch_plan)
    if not all(c.ok for c in checks):
        typer.echo(render_checks(checks), err=True)
        raise SlurmError("pre-flight checks failed (see the table above); nothing was submitted")


def _say_submitted(jobs: list[str], kinds: list[str]) -> None:
    waits = {"prepare": "", "train": "", "sweep": "", "gate": " (after training succeeds)", "release": " (after the gates pass)"}
    waits["train"] = waits["sweep"] = " (after the data is prepared)" if "prepare" in kinds else ""
    for kind, job in zip(kinds, jobs):
        typer.echo(f"submitted {kind} job {job}{waits[kind]}")


SWEEP_ACTIONS = ("status", "report", "gate", "release")


@command
def sweep(
    target: Annotated[str, typer.Argument(help="A recipe with a `sweep` section; or status, report, gate, release followed by the sweep directory.", show_default=False)],
    rest: Annotated[Optional[list[str]], typer.Argument(help="Overrides of the recipe; or the sweep directory.", show_default=False)] = None,
    local: Annotated[bool, typer.Option("--local", help="Run the trials here, one after another (the default).")] = False,
    on_slurm: Annotated[bool, typer.Option("--slurm", help="Submit the trials as one Slurm array job, sweep.parallel at a time.")] = False,
    sweep_dir: Annotated[Optional[Path], typer.Option("--sweep-dir", help="Sweep directory (default sweeps/<name>).")] = None,
    then: ThenOpt = None,
) -> None:
    """Search hyperparameters: one trial (a whole run) per point, pruned early when it falls behind.

    `orch sweep RECIPE [--local|--slurm]` starts or continues the sweep (finished trials are kept,
    unfinished ones resume); `orch sweep status|report DIR` ranks the trials and writes best.yaml
    (report: also report.html); `orch sweep gate|release DIR` gates or releases the best trial."""
    if target in SWEEP_ACTIONS:
        _sweep_action(target, rest or [])
        return
    from orchestrator.slurm.submit import parse_then

    if local and on_slurm:
        raise OrchestratorError("--local and --slurm: choose one")
    steps = parse_then(then)
    if on_slurm:
        from orchestrator.sweep.start import submit_sweep

        swept, jobs, kinds = submit_sweep(Path(target), list(rest or []), sweep_dir, steps)
        if not jobs:
            typer.echo(f"every trial of {swept.path} has finished; see: orch sweep status {swept.path}")
            return
        _say_submitted(jobs, kinds)
        typer.echo(f"sweep directory {swept.path}; follow with: orch sweep status {swept.path}")
        return
    from orchestrator.sweep.start import sweep_locally

    swept = sweep_locally(Path(target), list(rest or []), sweep_dir, typer.echo)
    _sweep_action("report", [str(swept.path)])
    for step in steps:
        _sweep_action(step, [str(swept.path)])


def _sweep_action(action: str, rest: list[str]) -> None:
    from orchestrator.sweep.report import render_status, render_sweep_report, trial_rows, write_best
    from orchestrator.sweep.study import SweepDir

    if len(rest) != 1:
        raise OrchestratorError(f"orch sweep {action} takes one sweep directory")
    swept = SweepDir(Path(rest[0]))
    rows, metric, direction = trial_rows(swept)
    if action in ("status", "report"):
        typer.echo(render_status(rows, metric, direction, swept))
        if any(r.state == "complete" for r in rows):
            best = write_best(swept, rows)
            typer.echo(f"best: trial {best.slot}, {metric} {best.value:.4f}; its recipe: {swept.best}")
        if action == "report":
            swept.report.write_text(render_sweep_report(swept))
            typer.echo(f"wrote {swept.report}")
        return
    best = write_best(swept, rows)
    typer.echo(f"{action} of the best trial {best.slot} ({best.run_dir})")
    if action == "gate":
        gate(best.run_dir)
    else:
        release(best.run_dir)


@command
def doctor(recipe: RecipeArg, overrides: OverridesArg = None, run_dir: RunDirOpt = None) -> None:
    """Pre-flight checks: Slurm controller and partition, writable directories, free space for checkpoints, write speed; inside an allocation also all-reduce bandwidth and GPU health."""
    from orchestrator.plan.load import load_and_plan
    from orchestrator.slurm.doctor import render_checks, run_checks

    _, launch_plan, _ = load_and_plan(recipe, overrides, run_dir=run_dir, for_slurm=True)
    checks = run_checks(launch_plan, allocation={k: v for k, v in os.environ.items() if k.startswith("SLURM_")})
    typer.echo(render_checks(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_FAILURE)


@command
def status(
    run_dir: RunDirArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing progress (bar with ETA, loss, tokens/s) until the run ends; Ctrl-C to stop watching.")] = False,
) -> None:
    """State (from Slurm for submitted runs), current step and loss, restarts."""
    from orchestrator.status import run_status

    if follow:
        from orchestrator.progress import follow_run

        follow_run(run_dir, sys.stderr.isatty())
    typer.echo(run_status(run_dir).line())


@command
def runs(
    root: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
    state: Annotated[Optional[str], typer.Option("--state", help="Only runs in this state (e.g. COMPLETED, RUNNING).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Only runs whose name contains this.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Only pretrain or finetune runs.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Only deepspeed or horovod runs.")] = None,
) -> None:
    """A table of the runs under a directory: name, task, backend, nodes, state, step, loss, energy, gates, Slurm job."""
    from orchestrator.status import find_runs, matches, render_runs

    filters = {"state": state, "name": name, "task": task, "backend": backend}
    rows = [r for r in find_runs(root) if matches(r, filters)]
    typer.echo(render_runs(rows) if rows else f"no runs under {root}" + (" match" if any(filters.values()) else ""))


@command
def show(run_dir: RunDirArg) -> None:
    """One run in detail: state, plan, latest metrics, checkpoints, energy, gates, releases, dashboards."""
    from orchestrator.show import describe_run

    typer.echo(describe_run(run_dir))


@command
def report(
    run_dir: RunDirArg,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default <run>/report.html).")] = None,
) -> None:
    """A self-contained HTML report: loss, validation loss, LR, throughput, energy per node, checkpoint stalls, gates."""
    from orchestrator.report import render_report
    from orchestrator.rundir.layout import RunDir

    page = render_report(run_dir)
    target = out or RunDir(run_dir).report
    target.write_text(page)
    typer.echo(f"wrote {target}")


@command
def logs(
    run_dir: RunDirArg,
    rank: Annotated[int, typer.Option("--rank", help="Which rank's log.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing as the log grows.")] = False,
) -> None:
    """Print a rank's log."""
    import time

    from orchestrator.rundir.layout import RunDir

    run = RunDir(run_dir)
    path = run.rank_log(rank)
    if not path.exists():
        raise OrchestratorError(f"no log for rank {rank} in {run.logs}")
    with path.open(errors="replace") as log:
        while True:
            chunk = log.read()
            if chunk:
                typer.echo(chunk, nl=False)
            elif not follow:
                return
            else:
                time.sleep(0.5)


@command
def cancel(run_dir: RunDirArg) -> None:
    """Cancel the run's Slurm job: its ranks checkpoint and stop, and the job is not requeued."""
    from orchestrator.rundir.layout import RunDir
    from orchestrator.slurm.submit import cancel as cancel_job

    typer.echo(f"cancelled job {cancel_job(RunDir(run_dir))}")


@command
def run(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe YAML file (default: the built-in tiny recipe).", show_default=False)] = None,
    overrides: OverridesArg = None,
    run_dir: RunDirOpt = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its newest verified checkpoint.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Set an existing run directory aside and start over.")] = False,
    dry_run: DryRunOpt = False,
    detach: Annotated[bool, typer.Option("--detach", help="Start training and return; it trains on without this command (follow with `orch status -f`).")] = False,
) -> None:
    """Train locally: all processes of this node, with a live progress bar; re-running continues from the newest verified checkpoint.

    One attempt at a time per run directory; if this command dies, the ranks checkpoint and stop (unless --detach)."""
    from orchestrator.execute import SubprocessRunner, launch, prepare_run, start
    from orchestrator.local_run import plan_local_run
    from orchestrator.progress import ProgressView

    overrides = list(overrides or [])
    if recipe is None or "=" in recipe:
        overrides = ([recipe] if recipe else []) + overrides
        recipe = str(DEFAULT_RECIPE)
    loaded, launch_plan, attempt = plan_local_run(Path(recipe), overrides, run_dir, resume, fresh, dry_run, typer.echo, detach)
    with attempt:
        run_directory = prepare_run(launch_plan, list(loaded.sources))
        if detach:
            start(launch_plan, run_directory, SubprocessRunner(attempt))
            pids = " ".join(map(str, attempt.holder["launchers"]))
            typer.echo(f"training detached (node launcher pid {pids}); follow with: orch status -f {run_directory.path}; "
                       f"stop it after a checkpoint with: kill -TERM {pids}")
            return
        with ProgressView(launch_plan.recipe.train.steps, sys.stderr.isatty()) as view:
            outcome = launch(launch_plan, run_directory, SubprocessRunner(attempt), view.update)
    typer.echo(ProgressView.describe_summary(outcome.summary or {}, outcome.run_dir))


@command
def checkpoints(
    run_dir: RunDirArg,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file against its content hash (reads them all).")] = True,
) -> None:
    """List a run's checkpoints, newest first, and whether each verifies.

    Step, tokens, size, world size, ZeRO stage, commit time, which one `latest` points to; then the
    checkpoints set aside, with the reason."""
    from orchestrator.checkpoint.listing import list_checkpoints, render_listing

    typer.echo(render_listing(list_checkpoints(run_dir, verify=verify)))


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
def energy(
    run_dir: RunDirArg,
    as_json: Annotated[bool, typer.Option("--json", help="The bill as JSON (the content of energy.json).")] = False,
) -> None:
    """A run's energy and carbon bill: per node and device with each figure's method, totals, phases,
    energy lost to failures, and the plan's forecast beside it. Works during a run too."""
    from orchestrator.energy.bill import bill_for
    from orchestrator.energy.report import render_bill

    bill = bill_for(run_dir)
    typer.echo(json.dumps(bill, indent=2) if as_json else render_bill(bill))


@command
def gate(
    run_dir: RunDirArg,
    checkpoint: CheckpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON (as written to gates/<checkpoint>.json).")] = False,
) -> None:
    """Evaluate the recipe's gates on one checkpoint (quality, health, memorisation, contamination,
    content, bias, budget); exit 4 when a required gate fails."""
    from orchestrator.gates.evaluate import evaluate_gates, render_report

    report = evaluate_gates(run_dir, checkpoint)
    typer.echo(report.model_dump_json(indent=2) if as_json else render_report(report))
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
    from orchestrator.gates.release import release as make_release

    made = make_release(run_dir, checkpoint, to, register)
    typer.echo(f"released {made.checkpoint} -> {made.path} ({made.files} files, sha256 in release.json)")
    if made.registered:
        typer.echo(f"registered {made.registered}")


@command
def verify(release_dir: Annotated[Path, typer.Argument(help="A release directory.", show_default=False)]) -> None:
    """Check a release against its manifest (release.json): every file, nothing added, no links; exit 6 if not."""
    from orchestrator.gates.integrity import verify_release

    manifest = verify_release(release_dir)
    typer.echo(f"{release_dir}: all {len(manifest.files)} files match release.json")
