"""The job's batch step: `python -m orchestrator.slurm.batch --run-dir DIR`, exec'd by job.sbatch.

Checks every node's health first (`orchestrator.slurm.preflight`) and requeues the job without
the nodes that fail it. Starts one node launcher per node with srun, the rendezvous on the first node of the allocation
at a port derived from the job id; forwards the preemption signal (Slurm sends it to this batch
step only) to srun, which passes it to every node; and when the ranks stop with the requeue
code, requeues the job itself up to `slurm.max_requeues` times. Every start and requeue is
appended to the run's `events.jsonl`, and said, with the signals it forwarded and how the step
ended, in the job's own log (`logs/slurm-<job>.out`, its standard output).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, NamedTuple

from orchestrator.errors import EXIT_REQUEUE, SlurmError
from orchestrator.rundir import events
from orchestrator.rundir.entry import FORWARDED_SIGNALS, module_argv, node_argv
from orchestrator.rundir.layout import RunDir
from orchestrator.recovery.spec import FaultToleranceSpec
from orchestrator.rundir.records import PlanRecord, read_plan, read_recipe
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.recovery_events import AttemptFailed, FailureClass, Hang, NodeUnhealthy, RanksFailed
from orchestrator.rundir.rows import CancelRequested, SlurmEnd, SlurmRequeued, SlurmSignal, SlurmStart, StopRequested
from orchestrator.shared.restarts import CLEAN_EXITS, FAILURE_OF_EXIT, next_attempt, no_restart, restarts_in_window, trained_a_step
from orchestrator.slurm.client import slurm

FOLLOW_S = 1.0
PREFLIGHT_TIMEOUT_S = 300


def node_command(plan: PlanRecord, python: str, master_addr: str, master_port: int, hosts: list[str] | None = None) -> list[str]:
    """The srun step of one attempt: one node launcher on each of `hosts` (the whole allocation when
    None; a subset when it holds spare nodes, with its own task count: the job's counts its spares)."""
    topology = plan.topology
    return [
        # Not --kill-on-bad-exit: the requeue code 75 counts as a bad exit, and the first node to stop
        # with it would have srun kill the others mid-save. --wait ends the other nodes a minute after
        # the first one exits, so a crashed node cannot leave its peers hanging in a collective.
        "srun", "--wait=60", f"--nodes={topology.nodes}", "--ntasks-per-node=1", *([f"--nodelist={','.join(hosts)}", f"--ntasks={topology.nodes}"] if hosts else []),
        # Appended to, like the job's own log: a requeued job's launchers add to what the first attempt's said.
        f"--output={RunDir(plan.run_dir).node_output_pattern}", "--open-mode=append",
        *node_argv(python, plan.backend, topology.nodes, topology.procs_per_node, plan.run_dir, master_addr, master_port),
    ]


def rendezvous(job_id: int, nodelist: str) -> tuple[str, int]:
    """The first host of the allocation, and a port every node derives alike from the job id."""
    hosts = slurm("scontrol", "show", "hostnames", nodelist).split()
    return hosts[0], 20000 + job_id % 20000


def job_end_time(job_id: int) -> float | None:
    """When Slurm will end this job (unix time), so the ranks can tell whether a save still fits."""
    try:
        fields = slurm("scontrol", "show", "job", "-o", str(job_id)).split()
    except SlurmError:
        return None
    end = dict(f.split("=", 1) for f in fields if "=" in f).get("EndTime", "Unknown")
    try:
        return datetime.fromisoformat(end).timestamp()
    except ValueError:
        return None


def cancel_requested(run: RunDir, job_id: int) -> bool:
    """Whether `orch cancel` asked for this job to end: its SIGTERM is then no preemption to requeue after."""
    return any(isinstance(e, CancelRequested) and str(e.job_id) == str(job_id) for e in run.history())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    try:
        sys.exit(run_job_step(RunDir(parser.parse_args().run_dir)).code)
    except SlurmError as exc:  # the scheduler did not answer the step's own queries: one line in the job's log
        _say(f"error: {exc}")
        sys.exit(1)


class JobStep(NamedTuple):
    code: int
    """The job's exit code: 0 when it was requeued, else the ranks'."""
    requeued: bool
    stopped_by_scheduler: bool = False
    """Slurm signalled the job (a cancel, a preemption, the time limit): however the ranks ended (a
    checkpoint and 75, or killed before they could, 143), the run did not fail of itself."""


def run_job_step(run: RunDir, stop_when: Callable[[list[dict]], bool] | None = None) -> JobStep:
    """Trains the run as this job's step; requeues the job when the ranks stopped on a preemption.

    `stop_when`, given each new metric row, stops the ranks after a checkpoint as a preemption
    would, but for good: the job is not requeued (how a sweep prunes a trial)."""
    plan = read_plan(run)
    spec = read_recipe(run).slurm
    job_id = int(os.environ["SLURM_JOB_ID"])
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    _, master_port = rendezvous(job_id, nodelist)
    events.append(run.events, SlurmStart(job_id=job_id, restart=restart, nodes=nodelist, end_time=job_end_time(job_id)))
    recovery = read_recipe(run).fault_tolerance
    allocation = Allocation(slurm("scontrol", "show", "hostnames", nodelist).split(), plan.topology.nodes)
    if recovery.enabled:
        unhealthy = check_nodes(run, allocation.hosts)
        if unhealthy and not allocation.replace(run, job_id, unhealthy):
            return leave_out(run, job_id, unhealthy, recovery.max_job_retries)
    received: list[int] = []
    steps: list[subprocess.Popen] = []

    def forward(signum, _frame):
        received.append(signum)
        events.append(run.events, SlurmSignal(job_id=job_id, signal=signum))
        steps[-1].send_signal(signum)
        _say(f"{signal.Signals(signum).name} forwarded to srun, which passes it to every node launcher")

    warning = getattr(signal, f"SIG{spec.signal}")
    idle_before = False
    while True:
        since, attempt, hosts = time.time(), next_attempt(run.history()), allocation.in_use
        steps.append(subprocess.Popen(node_command(plan, sys.executable, hosts[0], master_port, hosts if allocation.subset else None)))
        _say(f"job {job_id} (restart {restart}) on {nodelist}: started srun (pid {steps[-1].pid}), one node launcher "
             f"on each of {plan.topology.nodes} node(s){' (' + ','.join(hosts) + ')' if allocation.subset else ''}, "
             f"rendezvous {hosts[0]}:{master_port}; their logs are node-<name>.out, the ranks' rank-<n>.log")
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, forward)
        stopped = stop_when is not None and _follow(run, steps[-1], stop_when, warning)
        code = steps[-1].wait()
        # One node runs the whole job: its launcher restarted the ranks itself as long as it could.
        if received or stopped or code in CLEAN_EXITS or plan.topology.nodes == 1:
            break
        restarting, idle_before = restart_across_nodes(run, recovery, attempt, code, since, idle_before, hosts, plan.topology.procs_per_node)
        suspects = twice_named(run, hosts)
        if suspects and not allocation.replace(run, job_id, suspects):
            return leave_out(run, job_id, suspects, recovery.max_job_retries)
        if not restarting:
            break
    # Requeued only after the warning this job asked for (`--signal=B:<slurm.signal>`): a plain SIGTERM
    # is `scancel` (or Slurm preempting the job, which requeues it itself).
    warned = warning in received
    if code == EXIT_REQUEUE and warned and restart < spec.max_requeues and not stopped and not cancel_requested(run, job_id):
        try:
            slurm("scontrol", "requeue", str(job_id))
        except SlurmError as exc:
            # A job cancelled with scancel (not `orch cancel`) cannot be requeued: it ends here.
            _say(f"not requeued: {exc}")
        else:
            events.append(run.events, SlurmRequeued(job_id=job_id, restart=restart + 1))
            _say(f"the ranks checkpointed on {spec.signal}: requeued the job (restart {restart + 1} of at most {spec.max_requeues})")
            return JobStep(0, True, True)
    events.append(run.events, SlurmEnd(job_id=job_id, exit_code=code))
    _say(f"the nodes ended: the job exits {code}")
    return JobStep(code, False, bool(received))


@dataclass
class Allocation:
    """The job's nodes, in Slurm's order: the ranks run on the first `nodes` of the healthy ones, and
    the rest (`fault_tolerance.spare_nodes`) wait to take the place of one found bad."""

    hosts: list[str]
    nodes: int

    def __post_init__(self):
        self.allocated = len(self.hosts)

    @property
    def in_use(self) -> list[str]:
        return self.hosts[:self.nodes]

    @property
    def subset(self) -> bool:
        """Whether the ranks run on fewer nodes than the job holds (srun is then told which)."""
        return self.nodes < self.allocated

    @property
    def spares(self) -> int:
        return len(self.hosts) - self.nodes

    def replace(self, run: RunDir, job_id: int, bad: dict[str, list[str]]) -> bool:
        """Go on without the `bad` nodes, on spares, when enough are left (a `node_unhealthy` event
        naming them); False when not, and the job has to be requeued without them."""
        healthy = [host for host in self.hosts if host not in bad]
        if len(healthy) < self.nodes:
            return False
        self.hosts = healthy
        events.append(run.events, NodeUnhealthy(job_id=job_id, problems=bad, excluded=False, replaced=True))
        _say(f"going on without node(s) {', '.join(bad)}, on {','.join(self.in_use)} ({self.spares} spare(s) left)")
        return True


def twice_named(run: RunDir, hosts: list[str]) -> dict[str, list[str]]:
    """Nodes of this step named by the run's failures twice or more (where the ranks that hung or
    failed first ran): a node that keeps failing its ranks is taken for a bad one, though it passed
    the health check."""
    named = Counter(node for e in run.history() if isinstance(e, AttemptFailed) for node in e.nodes or [])
    return {node: [f"named in {named[node]} failures"] for node in hosts if named[node] >= 2}


def restart_across_nodes(run: RunDir, spec: FaultToleranceSpec, attempt: int, code: int, since: float, idle_before: bool,
                         hosts: list[str], procs_per_node: int) -> tuple[bool, bool]:
    """After the nodes' launchers ended on a fault (each stops its own ranks, none restarts a job of
    several nodes): record the attempt's failure, and whether a new srun step, a new rendezvous
    round in the same allocation, starts the ranks again from the newest verified checkpoint.
    Returns that, and whether the attempt failed before training a step."""
    history = [e for e in run.history() if (e.time or 0) >= since]
    culprit = what_failed(history, code)
    idle = not trained_a_step(run, history)
    used = restarts_in_window(run.history(), spec)
    reason = no_restart(spec, culprit.failure, idle, idle_before, used)
    event = events.append(run.events, AttemptFailed(
        attempt=attempt, failure=culprit.failure, detail=culprit.detail, ranks=culprit.ranks,
        nodes=sorted({hosts[r // procs_per_node] for r in culprit.ranks}), restarting=reason is None, restarts=used + (reason is None),
        max_restarts=spec.max_restarts if spec.enabled else 0, evidence=culprit.evidence, no_restart=reason))
    _say(event.describe() + ("" if reason else ": a new srun step in this allocation"))
    return reason is None, idle


class Culprit(NamedTuple):
    failure: FailureClass
    detail: str
    ranks: list[int]
    evidence: str
    """Relative to the run directory."""


def what_failed(history: list[BaseEvent], code: int) -> Culprit:
    """What ended an attempt of several nodes, from the events its node launchers wrote: on a hang,
    every node's watchdog fires, and the ranks furthest behind stopped first; on a crash, every
    node's ranks fail once one rank is gone, and the node whose failed rank went quiet first is the
    one it started on. With neither (a launcher that died itself), only srun's exit code."""
    hangs = [e for e in history if isinstance(e, Hang)]
    if hangs:
        detail = "; ".join(f"node {h.node}: rank(s) {', '.join(map(str, h.stopped_ranks or [])) or '?'} stopped reporting in {h.phase} "
                           f"of step {h.step}" for h in hangs)
        return Culprit("hang", detail, sorted({r for h in _stopped_first(hangs) for r in h.stopped_ranks or []}), hangs[0].stacks or "hangs")
    failed = [e for e in history if isinstance(e, RanksFailed)]
    if failed:
        first = min(failed, key=lambda e: (math.inf if e.quiet_since is None else e.quiet_since, e.node or 0))
        return Culprit(first.failure or FAILURE_OF_EXIT.get(code, "crash"), f"node {first.node}: {first.detail}", first.ranks or [],
                       first.evidence or "logs")
    return Culprit(FAILURE_OF_EXIT.get(code, "crash"), f"a node launcher exited {code} (the node-<name>.out logs say which rank)", [], "logs")


def _stopped_first(hangs: list[Hang]) -> list[Hang]:
    """The hang events that name the rank that stopped: every node's watchdog fires, and each names
    its own furthest-behind ranks; the stopped one is furthest behind of all (the lowest step)."""
    lowest = min((h.step for h in hangs if h.step is not None), default=None)
    return [h for h in hangs if h.step == lowest]


def check_nodes(run: RunDir, hosts: list[str]) -> dict[str, list[str]]:
    """Each node's problems by name, from the health check run on every node at once; a node that
    gave no answer (srun could not start the check there) is one problem too. Empty: all healthy."""
    command = ["srun", "--wait=60", f"--nodes={len(hosts)}", "--ntasks-per-node=1",
               *module_argv(sys.executable, "orchestrator.slurm.preflight", "--run-dir", str(run.path))]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=PREFLIGHT_TIMEOUT_S)
        printed, ended = done.stdout, f"srun exit {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        printed, ended = (exc.stdout or b"").decode(errors="replace"), f"still running after {PREFLIGHT_TIMEOUT_S} s"
    answers = {}
    for line in printed.splitlines():
        try:
            answer = json.loads(line)
            answers[answer["node"]] = answer["problems"]
        except (ValueError, KeyError, TypeError):
            continue  # a line the node's own shell set-up printed
    unhealthy = {node: problems for node, problems in answers.items() if problems}
    unhealthy.update({node: [f"no answer from its health check ({ended})"] for node in hosts if node not in answers})
    _say("health check: " + ("; ".join(f"{node}: {', '.join(p)}" for node, p in unhealthy.items()) if unhealthy else f"{len(answers)} node(s) healthy"))
    return unhealthy


def leave_out(run: RunDir, job_id: int, unhealthy: dict[str, list[str]], max_retries: int) -> JobStep:
    """Requeue the job without the unhealthy nodes (and those it left out before), up to
    `fault_tolerance.max_job_retries` times; past that the job fails, before any rank started.
    Held while its excluded nodes change: Slurm takes no such change for a running job, and a
    requeued one released at once could start on the same nodes again."""
    before = [e for e in run.history() if isinstance(e, NodeUnhealthy) and e.excluded and str(e.job_id) == str(job_id)]
    if len(before) >= max_retries:
        events.append(run.events, NodeUnhealthy(job_id=job_id, problems=unhealthy, excluded=False))
        events.append(run.events, SlurmEnd(job_id=job_id, exit_code=1))
        _say(f"unhealthy node(s) {', '.join(unhealthy)}; the job was requeued without bad nodes {len(before)} time(s), "
             f"fault_tolerance.max_job_retries is {max_retries}: it ends here")
        return JobStep(1, False)
    excluded = sorted({node for e in before for node in e.problems or {}} | set(unhealthy))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue ends this step with one: it only has to record it
    slurm("scontrol", "requeuehold", str(job_id))
    try:
        slurm("scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(excluded)}")
    finally:
        slurm("scontrol", "release", str(job_id))
    events.append(run.events, NodeUnhealthy(job_id=job_id, problems=unhealthy, excluded=True))
    _say(f"requeued the job without node(s) {','.join(excluded)} (job retry {len(before) + 1} of at most {max_retries})")
    return JobStep(0, True, True)


def _say(message: str) -> None:
    """A line of the job's own log. One unbuffered write: safe from the signal handler, whatever the
    main code was writing."""
    os.write(1, f"{time.strftime('%Y-%m-%d %H:%M:%S')} orchestrator.slurm.batch: {message}\n".encode())


def _follow(run: RunDir, step: subprocess.Popen, stop_when: Callable[[list[dict]], bool], warning: int) -> bool:
    """Feeds new metric rows to `stop_when` while the step runs; True once it asked the ranks to stop,
    with the job's own warning signal: srun passes it to the nodes as it is, where a SIGTERM would
    have srun end the step itself and kill the ranks mid-save."""
    seen = len(run.metric_rows())
    while step.poll() is None:
        rows = run.metric_rows()
        if stop_when(rows[seen:]):
            events.append(run.events, StopRequested(reason="pruned"))
            step.send_signal(warning)
            _say(f"stopping the ranks after a checkpoint, for good (pruned): {signal.Signals(warning).name} to srun")
            return True
        seen = len(rows)
        time.sleep(FOLLOW_S)
    return False


if __name__ == "__main__":
    main()
