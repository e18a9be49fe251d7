"""`orch submit`: plan for the cluster, check the script with `sbatch --test-only`, then write the
run directory and submit once. Nothing is written or submitted when a check fails."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from orchestrator.shared.env import EnvSnapshot, GpuInfo
from orchestrator.data.prepare import prepared_manifest
from orchestrator.errors import SlurmError
from orchestrator.starting.execute import prepare_run
from orchestrator.starting.remote_resume import check_remote_env
from orchestrator.plan.planner import LaunchPlan
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import add_job, read_jobs
from orchestrator.rundir.rows import CancelRequested, Checkpoint, SlurmSubmitted
from orchestrator.slurm.client import LIVE_STATES, job_states, slurm
from orchestrator.slurm.script import render_prepare_sbatch, render_sbatch, render_step_sbatch
from orchestrator.slurm.spec import SlurmSpec
# Without a GPU model in the recipe, plan memory for a common 80 GiB data-centre GPU.
ASSUMED_GPU = GpuInfo("GPU (Slurm)", 80 * 2**30, 8.0)


def cluster_env(env: EnvSnapshot, spec: SlurmSpec) -> EnvSnapshot:
    """The compute nodes as the recipe describes them, in place of the submitting machine."""
    return dataclasses.replace(
        env, gpus=(ASSUMED_GPU,) * spec.gpus_per_node, cpu_count=spec.cpus_per_task or env.cpu_count
    )


def signal_grace_s(run_dir: Path, spec: SlurmSpec) -> int:
    """The recipe's grace, raised to twice the longest checkpoint commit this run has measured."""
    commits = [e.stall_s + e.write_s for e in RunDir(run_dir).history() if isinstance(e, Checkpoint)]
    return max(spec.signal_grace_s, int(2 * max(commits)) + 1) if commits else spec.signal_grace_s


def render(plan: LaunchPlan, python: str) -> str:
    spec = plan.recipe.slurm
    return render_sbatch(plan, spec, python, signal_grace_s(plan.run_dir, spec))


def check_pass_env(spec: SlurmSpec, environ: Mapping[str, str]) -> None:
    """The job inherits `slurm.pass_env` from this environment: a missing one fails here, not on the nodes."""
    missing = [name for name in spec.pass_env if not environ.get(name)]
    if missing:
        raise SlurmError(f"slurm.pass_env names {', '.join(missing)}, not set here: export it before orch submit "
                         "(the job inherits it; its value is written nowhere)")


THEN = ("gate", "release")
"""What `--then` may chain after training, in this order."""


def parse_then(value: str | None) -> tuple[str, ...]:
    """`gate` or `gate,release`: the jobs to chain after training (a release needs its gates)."""
    steps = tuple(part.strip() for part in (value or "").split(",") if part.strip())
    if steps not in ((), ("gate",), ("gate", "release")):
        raise SlurmError(f"--then {value}: give `gate` or `gate,release` (a release needs the gates before it)")
    return steps


def submit(plan: LaunchPlan, python: str, sources: list[Path], then: tuple[str, ...] = ()) -> list[str]:
    """Submits the training job, after a data preparation job when the data is not prepared yet and
    before the `then` jobs (gates, release) that run on its result; returns the job ids in order."""
    training = render(plan, python)
    after = [("gate", render_step_sbatch(plan, plan.recipe.slurm, python, "gate", ["gate", str(plan.run_dir)])),
             ("release", render_step_sbatch(plan, plan.recipe.slurm, python, "release", ["release", str(plan.run_dir)]))]
    return submit_chain(plan, python, sources, ("train", training), [job for job in after if job[0] in then])


def submit_chain(plan: LaunchPlan, python: str, sources: list[Path], main: tuple[str, str], then: list[tuple[str, str]]) -> list[str]:
    """Submits `main` (kind, script) into the plan's run directory, each job after the one before it:
    a preparation job first when the data is missing, the `then` jobs after. Every script passes
    `sbatch --test-only` before anything is written or submitted. A job whose predecessor fails is
    cancelled by Slurm (`--kill-on-invalid-dep`), so a failed gate ends the chain: no release runs."""
    check_pass_env(plan.recipe.slurm, os.environ)
    check_remote_env(plan.recipe.checkpoint.remote, os.environ, "orch submit")
    if plan.recipe.checkpoint.local_dir:
        raise SlurmError("checkpoint.local_dir is for orch run: a requeued job may land on another node, and the batch step "
                         "does not fetch from the store yet; give a checkpoint.dir on the shared filesystem")
    _refuse_live_jobs(RunDir(plan.run_dir), main[0])
    unprepared = prepared_manifest(plan.recipe.data, plan.recipe.train.seed, plan.data_cache_dir) is None
    jobs = [("prepare", render_prepare_sbatch(plan, plan.recipe.slurm, python, sources))] if unprepared else []
    jobs += [main, *then]
    for _, text in jobs:
        with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as probe:
            probe.write(text)
            probe.flush()
            slurm("sbatch", "--test-only", probe.name)
    run = prepare_run(plan, sources, with_data=not unprepared)
    submitted: list[str] = []
    for kind, text in jobs:
        script = getattr(run, SCRIPTS[kind])
        run.write_file(script.name, text)
        after = [f"--dependency=afterok:{submitted[-1]}", "--kill-on-invalid-dep=yes"] if submitted else []
        submitted.append(_sbatch(run, script, kind, *after))
    return submitted


def _refuse_live_jobs(run: RunDir, kind: str) -> None:
    """A second submission while the run's previous job of this kind (training, or a sweep's array)
    is still queued or running would train twice into one directory: refused, naming the job."""
    for job in read_jobs(run).of_kind(kind):
        try:
            live = [state for state in job_states(job) if state in LIVE_STATES]
        except SlurmError:
            continue  # gone from the scheduler: long finished
        if live:
            raise SlurmError(f"{kind} job {job} of {run.path} is still {live[0]}: wait for it, or cancel it (scancel {job}), "
                             "before submitting again")


SCRIPTS = {"prepare": "prepare_script", "train": "script", "sweep": "script", "gate": "gate_script", "release": "release_script"}
"""Where each kind of job's script is kept in the run directory (a `RunDir` entry)."""


def _sbatch(run: RunDir, script: Path, kind: str, *options: str) -> str:
    job_id = slurm("sbatch", "--parsable", *options, str(script)).strip().split(";")[0]
    add_job(run, job_id, kind)
    events.append(run.events, SlurmSubmitted(job_id=int(job_id), kind=kind))
    return job_id


def cancel(run: RunDir) -> str:
    """Cancel the run's newest job. Slurm delivers a cancel to the batch step as SIGTERM, which it
    cannot tell from a preemption: the `cancel_requested` event, written first, tells it not to
    requeue after the ranks' checkpoint."""
    jobs = read_jobs(run).of_kind("train")
    if not jobs:
        raise SlurmError(f"{run.path} has no Slurm job (slurm.json missing)")
    events.append(run.events, CancelRequested(job_id=jobs[-1]))
    slurm("scancel", jobs[-1])
    return jobs[-1]
