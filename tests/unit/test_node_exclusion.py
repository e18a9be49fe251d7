"""Which nodes a Slurm job leaves out: a node named by two failures, and spares taking a bad node's
place (`orchestrator.slurm.batch`); the health check's own verdicts (`orchestrator.slurm.preflight`)."""

import time

from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.recovery.spec import FaultToleranceSpec
from orchestrator.rundir.recovery_events import AttemptFailed, Hang, NodeUnhealthy, RanksFailed
from orchestrator.slurm.batch import Allocation, _stopped_first, restart_across_nodes, twice_named
from orchestrator.slurm.preflight import _free_space, _hook


def test_a_node_named_by_two_failures_is_a_suspect_and_one_named_once_is_not(tmp_path):
    run = RunDir(tmp_path)
    events.append(run.events, AttemptFailed(attempt=1, failure="hang", nodes=["n2"]))
    assert twice_named(run, ["n1", "n2"]) == {}
    events.append(run.events, AttemptFailed(attempt=2, failure="crash", nodes=["n2", "n1"]))
    events.append(run.events, AttemptFailed(attempt=3, failure="hang", nodes=["n2"]))
    assert twice_named(run, ["n1", "n3"]) == {}  # n2 no longer in the step
    assert twice_named(run, ["n1", "n2"]) == {"n2": ["named in 3 failures"]}


def test_a_crash_across_nodes_names_the_node_whose_rank_went_quiet_first_and_twice_leaves_it_out(tmp_path):
    """Rank 3 (node n2's) killed: node n1's ranks then fail on the closed connection, later."""
    run = RunDir(tmp_path)
    hosts = ["n1", "n2"]
    for attempt in (1, 2):
        since = time.time()
        events.append(run.events, RanksFailed(node=0, attempt=attempt, failure="crash", detail="rank 0 exited 1", ranks=[0],
                                              evidence="logs/rank-0.log", quiet_since=since + 2))
        events.append(run.events, RanksFailed(node=1, attempt=attempt, failure="crash", detail="rank 3 killed by SIGKILL", ranks=[3],
                                              evidence="logs/rank-3.log", quiet_since=since + 1))
        restarting, _ = restart_across_nodes(run, FaultToleranceSpec(), attempt, 1, since, False, hosts, procs_per_node=2)
        assert restarting
    failed = [e for e in run.history() if isinstance(e, AttemptFailed)]
    assert [(e.failure, e.ranks, e.nodes, e.evidence) for e in failed] == [("crash", [3], ["n2"], "logs/rank-3.log")] * 2
    assert failed[0].detail == "node 1: rank 3 killed by SIGKILL"
    assert twice_named(run, hosts) == {"n2": ["named in 2 failures"]}


def test_spares_take_a_bad_nodes_place_until_there_are_none(tmp_path):
    run = RunDir(tmp_path)
    allocation = Allocation(["n1", "n2", "n3"], nodes=2)
    assert allocation.in_use == ["n1", "n2"] and allocation.subset and allocation.spares == 1
    assert allocation.replace(run, 7, {"n1": ["disk full"]})
    assert allocation.in_use == ["n2", "n3"] and allocation.spares == 0
    assert not allocation.replace(run, 7, {"n3": ["GPU 0 missing"]})
    assert allocation.in_use == ["n2", "n3"]  # unchanged: the job is requeued without n3 instead
    (event,) = [e for e in run.history() if isinstance(e, NodeUnhealthy)]
    assert event.replaced and event.problems == {"n1": ["disk full"]}


def test_the_rank_that_stopped_is_named_by_the_hang_furthest_behind():
    """Every node's watchdog fires; the node whose rank stopped names it at the lowest step."""
    hangs = [Hang(node=0, step=7, stopped_ranks=[0, 1]), Hang(node=1, step=6, stopped_ranks=[3])]
    assert _stopped_first(hangs) == [hangs[1]]


def test_the_health_checks_own_verdicts(tmp_path):
    assert _free_space(tmp_path, 1) == []
    (problem,) = _free_space(tmp_path, 2**62)
    assert problem.startswith(f"{tmp_path}: ") and "MiB needed" in problem
    assert _hook("true") == []
    assert _hook("bash -c 'echo GPU 3 missing; exit 3'") == ["node_health_check exited 3: GPU 3 missing"]
    assert _hook("true; rm -rf /") == ["node_health_check could not run (true; rm -rf /): [Errno 2] No such file or directory: 'true;'"]  # no shell
