"""The health check the batch step runs on every node of the allocation before any rank starts:
`srun --ntasks-per-node=1 python -m orchestrator.slurm.preflight --run-dir DIR`.

A bad node found here costs seconds; found by a hang an hour into the job, it costs that hour on
every device of the allocation. The checks: free space where the checkpoints go and in /dev/shm; on
GPU plans, the GPUs this node shows and their health (`nvidia-smi`: uncorrected ECC errors,
temperature, as `orch doctor` checks them); the recipe's own `fault_tolerance.node_health_check`, a
command (a site's node health check script, say) that fails the node by a non-zero exit or by
running past its timeout; and last, when the allocation has three nodes or more, one all-reduce across
the allocation and each node's links to its ring neighbours, timed in one process group
(`orchestrator.slurm.link_check`): a node whose links are both slow against the others is named.
`orch doctor`'s probe measures the interconnect's bandwidth before a job; this check finds the node
that lags its peers in this allocation.

Each node prints one JSON line, its name and its problems (none when healthy), after its own checks,
and a second one with the link check's problems added when that check finds any: the batch step
keeps each node's last line, so a node whose link check never returns (NCCL's watchdog ends the
process when a peer stops mid-check; the step may time out) is judged by its own checks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from orchestrator.rundir.layout import RunDir
from orchestrator.errors import SlurmError
from orchestrator.rundir.records import PlanRecord, read_plan, read_recipe
from orchestrator.slurm.client import slurm
from orchestrator.slurm.link_check import MIN_NODES, SLOW_LINK_VARIABLE, LinkCheck, check_links, injected_delay_s, link_port
from orchestrator.slurm.probe import gpu_health

MiB = 2**20
CHECKPOINT_BYTES_PER_PARAM = 16
"""fp32 weights and Adam's two moments, with room for the model's own copy: what one save may need."""
SHM_FREE_BYTES = 64 * MiB
HOOK_TIMEOUT_S = 120


def node_problems(plan: PlanRecord, health_check: str | None) -> list[str]:
    problems = []
    need = max(256 * MiB, plan.model.num_params * CHECKPOINT_BYTES_PER_PARAM // plan.topology.nodes)
    problems += _free_space(_existing(plan.checkpoint_dir), need)
    if Path("/dev/shm").is_dir():
        problems += _free_space(Path("/dev/shm"), SHM_FREE_BYTES)
    if plan.topology.device == "cuda":
        problems += _gpus(plan.topology.procs_per_node)
    if health_check:
        problems += _hook(health_check)
    return problems


def _existing(path: Path) -> Path:
    """The checkpoint directory, or its nearest existing parent before the first save made it."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_space(path: Path, need: int) -> list[str]:
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return [f"{path}: {exc.strerror or exc}"]
    return [f"{path}: {free / MiB:.0f} MiB free, {need / MiB:.0f} MiB needed"] if free < need else []


def _gpus(needed: int) -> list[str]:
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"nvidia-smi did not answer: {exc}"]
    seen = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    return ([f"{seen} GPU(s) visible, {needed} needed"] if seen < needed else []) + gpu_health()


def _hook(command: str) -> list[str]:
    """The recipe's command, split into words as a shell would but run without one: a recipe value
    names a program and its arguments, never shell code (`bash -c '...'` says so explicitly)."""
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=HOOK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [f"node_health_check ran past {HOOK_TIMEOUT_S} s: {command}"]
    except (OSError, ValueError) as exc:
        return [f"node_health_check could not run ({command}): {exc}"]
    if done.returncode:
        said = (done.stdout + done.stderr).strip().splitlines()
        return [f"node_health_check exited {done.returncode}" + (f": {said[-1]}" if said else "")]
    return []


def _links(node: str, plan: PlanRecord) -> list[str]:
    """The link check, when this step runs on three nodes or more (`MIN_NODES`), with this node's place in
    it from srun's variables."""
    nodes = int(os.environ.get("SLURM_NTASKS", "1"))
    if nodes < MIN_NODES:
        return []
    try:
        delay_s = injected_delay_s(os.environ.get(SLOW_LINK_VARIABLE), node)
    except ValueError as exc:  # set for every node alike: failing them all for it would leave the whole allocation out
        _say(node, f"{exc}: ignored")
        delay_s = 0.0
    try:
        first = slurm("scontrol", "show", "hostnames", os.environ["SLURM_STEP_NODELIST"]).split()[0]
    except SlurmError as exc:  # the others wait for this node in vain, and blame nobody for it
        _say(node, f"link check skipped: {exc}")
        return []
    return check_links(LinkCheck(rank=int(os.environ["SLURM_PROCID"]), nodes=nodes, node=node, store_host=first,
                                 port=link_port(int(os.environ["SLURM_JOB_ID"])), cuda=plan.topology.device == "cuda", delay_s=delay_s))


def _say(node: str, message: str) -> None:
    """A line of the job's log: the batch step reads the check's standard output, and leaves its standard error there."""
    print(f"preflight on {node}: {message}", file=sys.stderr, flush=True)


def _answer(node: str, problems: list[str]) -> None:
    print(json.dumps({"node": node, "problems": problems}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    run = RunDir(parser.parse_args().run_dir)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    plan = read_plan(run)
    problems = node_problems(plan, read_recipe(run).fault_tolerance.node_health_check)
    _answer(node, problems)  # what the node is judged by should the link check never return
    links = _links(node, plan)
    if links:
        _answer(node, problems + links)


if __name__ == "__main__":
    main()
