"""`orch doctor`: the checks users otherwise make an hour into the queue, as one table with fixes."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import SlurmError
from orchestrator.plan.planner import LaunchPlan
from orchestrator.rundir.entry import module_argv
from orchestrator.slurm.client import slurm

PROBE_BYTES = 64 << 20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def checkpoint_bytes(plan: LaunchPlan) -> int:
    """Bytes of one checkpoint: parameters plus optimizer state, summed over the ranks' shards."""
    optimizer = 12 if plan.recipe.train.precision != "fp32" else 8
    param = 2 if plan.recipe.train.precision != "fp32" else 4
    return plan.num_params * (param + optimizer)


def run_checks(plan: LaunchPlan, slurm_checks: bool = True, allocation: dict[str, str] | None = None) -> list[Check]:
    """`allocation` (the SLURM_* variables of the environment, when inside one) adds the interconnect
    and GPU checks, which need the nodes themselves."""
    checks = []
    if slurm_checks:
        checks += _slurm_checks(plan)
    if allocation and "SLURM_JOB_ID" in allocation:
        checks += _allocation_checks(plan, allocation)
    checks.append(_writable(plan.run_dir.parent, "run directory"))
    checks.append(_space(plan))
    checks.append(_write_speed(plan.run_dir.parent))
    return checks


def _slurm_checks(plan: LaunchPlan) -> list[Check]:
    try:
        slurm("scontrol", "ping")
    except SlurmError as exc:
        return [Check("slurm controller", False, str(exc), "start it (slurm/dev-cluster.sh up locally) or check SLURM_CONF")]
    checks = [Check("slurm controller", True, "answers")]
    spec, nodes = plan.recipe.slurm, plan.topology.nodes
    partition = spec.partition
    out = slurm("sinfo", "-h", "-o", "%P %D %l", *(["-p", partition] if partition else []))
    rows = [line.split() for line in out.splitlines() if line.strip()]
    if not rows:
        return checks + [Check("partition", False, f"`{partition}` does not exist", "set slurm.partition to one `sinfo` lists")]
    name, count, limit = rows[0]
    count = int(count)
    checks.append(Check("partition", count >= nodes, f"{name.rstrip('*')}: {count} nodes, time limit {limit}",
                        "" if count >= nodes else f"ask for at most {count} nodes (distributed.nodes) or use a bigger partition"))
    if spec.time_limit is None and limit == "infinite":
        checks.append(Check("time limit", False, "no slurm.time_limit and the partition has none", "set slurm.time_limit"))
    return checks


def _allocation_checks(plan: LaunchPlan, allocation: dict[str, str]) -> list[Check]:
    from orchestrator.slurm.batch import rendezvous

    nodes = int(allocation.get("SLURM_JOB_NUM_NODES", "1"))
    master, port = rendezvous(int(allocation["SLURM_JOB_ID"]), allocation["SLURM_JOB_NODELIST"])
    try:
        out = slurm("srun", f"--nodes={nodes}", "--ntasks-per-node=1", *module_argv(plan.processes[0].argv[0], "orchestrator.slurm.probe",
                    "--master-addr", master, "--master-port", str(port + 1)))
    except SlurmError as exc:
        return [Check("all-reduce", False, str(exc), "check the nodes' network (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME)")]
    result = json.loads(out.strip().splitlines()[-1])
    checks = [Check("all-reduce", True, f"{result['bus_gbps']:.2f} GB/s bus bandwidth across {result['world_size']} nodes")]
    problems = result["gpu_problems"]
    checks.append(Check("GPU health", not problems, "; ".join(problems) or "no ECC errors or overheating reported",
                        "exclude the node (--exclude) and report it" if problems else ""))
    return checks


def _writable(directory: Path, what: str) -> Check:
    directory.mkdir(parents=True, exist_ok=True)
    ok = os.access(directory, os.W_OK)
    return Check(f"{what} writable", ok, str(directory), "" if ok else "choose a writable --run-dir")


def _space(plan: LaunchPlan) -> Check:
    keep = plan.recipe.checkpoint.keep_last + 1  # one more while the next commits
    needed = checkpoint_bytes(plan) * keep
    root = plan.checkpoint_dir if plan.checkpoint_dir.exists() else plan.run_dir.parent
    free = shutil.disk_usage(root).free
    ok = free > 1.2 * needed
    return Check("free space", ok, f"{free / 2**30:.1f} GiB free for {keep} checkpoints of ~{checkpoint_bytes(plan) / 2**30:.2f} GiB",
                 "" if ok else "free space, lower checkpoint.keep_last, or move checkpoint.dir")


def _write_speed(directory: Path) -> Check:
    probe = directory / f".orch-doctor-{os.getpid()}"
    block = os.urandom(1 << 20)
    tic = time.perf_counter()
    with probe.open("wb") as out:
        for _ in range(PROBE_BYTES >> 20):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - tic
    probe.unlink()
    rate = PROBE_BYTES / seconds / 1e6
    return Check("write speed", rate > 50, f"{rate:,.0f} MB/s (64 MiB with fsync)", "" if rate > 50 else "checkpoints will stall: use faster storage")


def render_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'ok' if c.ok else 'FAIL':<4} {c.name:<{width}}  {c.detail}" + (f"  -> {c.fix}" if c.fix else "") for c in checks]
    return "\n".join(lines)
