"""`orch submit`: plan for the cluster, check the script with `sbatch --test-only`, then write the
run directory and submit once. Nothing is written or submitted when a check fails."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from orchestrator.env import EnvSnapshot, GpuInfo
from orchestrator.errors import SlurmError
from orchestrator.execute import prepare_run
from orchestrator.plan.planner import LaunchPlan
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_jobs, write_jobs
from orchestrator.slurm.client import slurm
from orchestrator.slurm.script import render_sbatch
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
    commits = [e["stall_s"] + (e.get("write_s") or 0) for e in RunDir(run_dir).history() if e["event"] == "checkpoint"]
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


def submit(plan: LaunchPlan, python: str, sources: list[Path]) -> str:
    check_pass_env(plan.recipe.slurm, os.environ)
    script = render(plan, python)
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as probe:
        probe.write(script)
        probe.flush()
        slurm("sbatch", "--test-only", probe.name)
    run = prepare_run(plan, sources)
    run.write_file(run.script.name, script)
    job_id = slurm("sbatch", "--parsable", str(run.script)).strip().split(";")[0]
    write_jobs(run, [*read_jobs(run), job_id])
    events.append(run.events, "slurm_submitted", job_id=int(job_id))
    return job_id


def cancel(run: RunDir) -> str:
    """Cancel the run's newest job. Slurm delivers a cancel to the batch step as SIGTERM, which it
    cannot tell from a preemption: the `cancel_requested` event, written first, tells it not to
    requeue after the ranks' checkpoint."""
    jobs = read_jobs(run)
    if not jobs:
        raise SlurmError(f"{run.path} has no Slurm job (slurm.json missing)")
    events.append(run.events, "cancel_requested", job_id=jobs[-1])
    slurm("scancel", jobs[-1])
    return jobs[-1]
