"""Render the sbatch script for a plan: a pure function of data, tested against golden files.

The script only asks for resources and prepares the environment; everything else happens in
`python -m orchestrator.slurm.batch`, which is testable Python rather than shell. The recipe's
values are checked by `SlurmSpec` before they get here; the run directory's path is checked here,
and every path and argument in the shell part is quoted.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from orchestrator.errors import SlurmError
from orchestrator.shared.hub import OFFLINE_ENV
from orchestrator.plan.planner import LaunchPlan
from orchestrator.shared.redact import MARK
from orchestrator.rundir.entry import module_argv
from orchestrator.rundir.layout import RunDir
from orchestrator.slurm.spec import SlurmSpec

# sbatch splits a directive at whitespace and has no quoting for a line break.
UNSAFE_IN_DIRECTIVE = re.compile(r"[\s\"'\\]|[\x00-\x1f\x7f]")


def _directive_path(path: Path) -> str:
    if UNSAFE_IN_DIRECTIVE.search(str(path)):
        raise SlurmError(f"run directory {str(path)!r} holds a space, quote or line break, which an #SBATCH line cannot carry: "
                         "choose another --run-dir")
    return str(path)


def directives(plan: LaunchPlan, spec: SlurmSpec, grace_s: int) -> list[str]:
    run = plan.run_dir
    lines = [
        f"--job-name={plan.recipe.name}",
        f"--nodes={plan.topology.nodes + plan.recipe.fault_tolerance.spare_nodes}",
        "--ntasks-per-node=1",
        f"--output={_directive_path(RunDir(run).logs)}/slurm-%j.out",
        "--open-mode=append",
        f"--signal=B:{spec.signal}@{grace_s}",
        "--requeue",
    ]
    optional = {
        "partition": spec.partition, "account": spec.account, "qos": spec.qos, "time": spec.time_limit,
        "cpus-per-task": spec.cpus_per_task, "mem": spec.mem, "constraint": spec.constraint,
        "gpus-per-node": spec.gpus_per_node or None,
    }
    lines += [f"--{key}={value}" for key, value in optional.items() if value is not None]
    if spec.exclusive:
        lines.append("--exclusive")
    return lines + [d.removeprefix("#SBATCH ") for d in spec.extra_directives]


def _setup_line(line: str) -> str:
    """A setup line that held a secret (redacted by the planner) is left out: run, it would set a
    variable to the redaction mark."""
    return f"# left out, it held a secret (see slurm.pass_env): {line}" if MARK in line else line


def _required_env(name: str, key: str) -> str:
    """Fails the job at once, naming the variable and the recipe key that asks for it, when the
    environment did not reach it (sbatch passes the submitting environment on)."""
    return f': "${{{name}:?is not set in the job: export it where orch submit runs ({key})}}"'


def _env_checks(plan: LaunchPlan, spec: SlurmSpec) -> list[str]:
    """`slurm.pass_env`, then the object store's credentials (`checkpoint.remote.env`) not named there."""
    remote = plan.recipe.checkpoint.remote
    lines = [_required_env(name, "slurm.pass_env") for name in spec.pass_env]
    return lines + [_required_env(name, "checkpoint.remote.env") for name in (remote.env if remote else []) if name not in spec.pass_env]


def step_directives(plan: LaunchPlan, spec: SlurmSpec, role: str, cpus: int | None) -> list[str]:
    """A one-task job beside the training job (data preparation, gates, release): one node, `cpus`
    cores, the cluster's own directives (partition, account, time) still applying."""
    lines = [
        f"--job-name={plan.recipe.name}-{role}",
        "--nodes=1",
        "--ntasks=1",
        *([f"--cpus-per-task={cpus}"] if cpus else []),
        f"--output={_directive_path(RunDir(plan.run_dir).logs)}/{role}-%j.out",
    ]
    optional = {"partition": spec.partition, "account": spec.account, "qos": spec.qos, "time": spec.time_limit,
                "mem": spec.mem, "constraint": spec.constraint}
    lines += [f"--{key}={value}" for key, value in optional.items() if value is not None]
    return lines + [d.removeprefix("#SBATCH ") for d in spec.extra_directives]


def render_sbatch(plan: LaunchPlan, spec: SlurmSpec, python: str, grace_s: int) -> str:
    """The training job's script: the batch step (`orchestrator.slurm.batch`) in the prepared environment."""
    return _script(plan, spec, directives(plan, spec, grace_s), module_argv(python, "orchestrator.slurm.batch", "--run-dir", str(plan.run_dir)))


def render_array_sbatch(plan: LaunchPlan, spec: SlurmSpec, python: str, grace_s: int, slots: list[int], parallel: int) -> str:
    """A sweep's array job: one task per trial slot (`orchestrator.sweep.trial`), `parallel` at once;
    each task's resources are the training job's. `plan` is the sweep's recipe planned into the sweep directory."""
    array = f"--array={array_ranges(slots)}%{parallel}"
    command = module_argv(python, "orchestrator.sweep.trial", "--sweep-dir", str(plan.run_dir))
    return _script(plan, spec, [*directives(plan, spec, grace_s), array], command)


def array_ranges(slots: list[int]) -> str:
    """Slots as sbatch writes an array: `0-3`, `1,4-6`."""
    ranges: list[list[int]] = []
    for slot in sorted(slots):
        if ranges and slot == ranges[-1][1] + 1:
            ranges[-1][1] = slot
        else:
            ranges.append([slot, slot])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def render_prepare_sbatch(plan: LaunchPlan, spec: SlurmSpec, python: str, recipe_sources: list[Path]) -> str:
    """The data preparation job's script, which the training job waits for (`--dependency=afterok`)."""
    command = module_argv(python, "orchestrator.slurm.prepare", "--run-dir", str(plan.run_dir), *(str(p) for p in recipe_sources))
    return _script(plan, spec, step_directives(plan, spec, "prepare", plan.recipe.data.workers), command)


def render_step_sbatch(plan: LaunchPlan, spec: SlurmSpec, python: str, role: str, arguments: list[str]) -> str:
    """A job that runs one `orch` command after training (`gate`, `release`, or their sweep forms)."""
    return _script(plan, spec, step_directives(plan, spec, role, spec.cpus_per_task), module_argv(python, "orchestrator", *arguments))


def _script(plan: LaunchPlan, spec: SlurmSpec, job_directives: list[str], command: list[str]) -> str:
    body = ["#!/bin/bash"]
    body += [f"#SBATCH {d}" for d in job_directives]
    body += ["", f"# Generated by orch submit for recipe {plan.recipe.name} (hash {plan.recipe_hash}).", "set -eo pipefail"]
    body += [f"module load {shlex.quote(m)}" for m in spec.modules]
    body += [_setup_line(line) for line in spec.setup]
    body += _env_checks(plan, spec)
    if spec.venv is not None:
        body.append(f"source {shlex.quote(str(Path(spec.venv) / 'bin' / 'activate'))}")
    exports = {**OFFLINE_ENV, **plan.processes[0].env}
    body += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    body.append(f"cd {shlex.quote(str(plan.processes[0].cwd))}")
    body.append(f"exec {shlex.join(command)}")
    return "\n".join(body) + "\n"
