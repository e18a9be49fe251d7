"""The preflight's link check (`orchestrator.slurm.link_check`): its verdict from the links' times,
and three real processes on loopback, as three nodes, finding the one whose links were slowed."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import replace
from types import SimpleNamespace

import pytest

from orchestrator.errors import SlurmError
from orchestrator.shared.env import free_port
from orchestrator.slurm import batch, preflight
from orchestrator.slurm.link_check import SLOW_LINK_VARIABLE, LinkCheck, _unreachable, check_links, injected_delay_s, link_port, slow_nodes

NODES = 3
SLOWED = 1
DELAY_S = 0.15


def test_the_node_both_of_whose_links_are_slow_is_named_and_no_other():
    assert list(slow_nodes([0.002, 0.002, 0.002, 0.002])) == []
    assert list(slow_nodes([0.003, 0.150, 0.160, 0.002, 0.003])) == [2]  # node 2 sits between links 1 and 2
    assert list(slow_nodes([0.150, 0.002, 0.002, 0.160])) == [0]  # the ring closes: node 0's links are 3 and 0
    assert list(slow_nodes([0.002, 0.150, 0.002, 0.002])) == []  # one slow link: either end may be at fault
    assert list(slow_nodes([0.150, 0.002, 0.160])) == [0]  # three nodes: each is timed against the one link it is not on
    assert slow_nodes([0.150, 0.002, 0.160])[0].startswith("160.0 ms and 150.0 ms")  # the link before it, then the one after


def test_noise_on_tiny_times_and_two_nodes_name_nobody():
    assert slow_nodes([0.0001, 0.0008, 0.0009, 0.0001]) == {}  # 8x the median, but under the absolute floor
    assert slow_nodes([0.5, 0.001]) == {}  # two nodes: neither can be told apart from its only neighbour


def _node(rank: int, rounds: list[list[LinkCheck]], out) -> None:
    out.put((rank, [check_links(check) for check in rounds[rank]]))


@pytest.fixture(scope="module")
def rounds() -> list[dict[int, list[str]]]:
    """Each node's problems from two rounds of the check in the same three processes: all healthy,
    then node 1 slowed. They are forked from a fork server that imported torch once: forked from
    pytest itself, after other tests ran torch's OpenMP thread pool, a child could hang in its first
    parallel region (GNU OpenMP does not survive a fork)."""
    ports = [free_port(), free_port()]
    plans = [[LinkCheck(rank=rank, nodes=NODES, node=f"node{rank}", store_host="127.0.0.1", port=port, join_timeout_s=30,
                        delay_s=DELAY_S if slowed and rank == SLOWED else 0.0) for port, slowed in zip(ports, (False, True))]
             for rank in range(NODES)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch.distributed", "orchestrator.slurm.link_check"])
    out = context.Queue()
    processes = [context.Process(target=_node, args=(rank, plans, out)) for rank in range(NODES)]
    for process in processes:
        process.start()
    try:
        answers = dict(out.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return [{rank: answers[rank][i] for rank in range(NODES)} for i in range(2)]


def test_healthy_links_name_nobody(rounds):
    assert rounds[0] == {0: [], 1: [], 2: []}


def test_the_slowed_node_and_only_it_has_the_problem(rounds):
    slowed = rounds[1]
    assert [rank for rank, problems in slowed.items() if problems] == [SLOWED]
    assert slowed[SLOWED][0].startswith("slow links to its ring neighbours node0 and node2: ")


def test_the_slow_link_is_injected_on_the_named_node_only():
    assert injected_delay_s("node2:0.5", "node2") == 0.5
    assert injected_delay_s("node2:0.5", "node1") == 0.0
    assert injected_delay_s(None, "node1") == 0.0
    for bad in ("node2", "node2:fast", ":1", "node2:-1"):
        with pytest.raises(ValueError, match="NODE:SECONDS"):
            injected_delay_s(bad, "node2")


def test_a_malformed_injection_is_said_and_ignored_not_a_problem_of_every_node(monkeypatch, capsys):
    def no_scheduler(*args):
        raise SlurmError("scontrol: no answer")

    monkeypatch.setattr(preflight, "slurm", no_scheduler)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[0-2]")
    monkeypatch.setenv(SLOW_LINK_VARIABLE, "node2")
    assert preflight._links("node2", SimpleNamespace(topology=SimpleNamespace(device="cpu"))) == []
    assert capsys.readouterr().err.splitlines() == [
        f"preflight on node2: {SLOW_LINK_VARIABLE}: 'node2' is not NODE:SECONDS: ignored",
        "preflight on node2: link check skipped: scontrol: no answer"]


@pytest.mark.parametrize("links", [[], ["slow links to its ring neighbours a and c: ..."]])
def test_a_node_answers_after_its_own_checks_and_again_when_its_links_are_slow(monkeypatch, capsys, links):
    """The batch step keeps a node's last line: the first stands should the link check never return."""
    monkeypatch.setattr("sys.argv", ["preflight", "--run-dir", "run"])
    monkeypatch.setenv("SLURMD_NODENAME", "b")
    monkeypatch.setattr(preflight, "read_plan", lambda run: None)
    monkeypatch.setattr(preflight, "read_recipe", lambda run: SimpleNamespace(fault_tolerance=SimpleNamespace(node_health_check=None)))
    monkeypatch.setattr(preflight, "node_problems", lambda plan, hook: ["/dev/shm: 1 MiB free"])
    monkeypatch.setattr(preflight, "_links", lambda node, plan: links)
    preflight.main()
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert answers == [{"node": "b", "problems": ["/dev/shm: 1 MiB free"]}] + ([{"node": "b", "problems": ["/dev/shm: 1 MiB free", *links]}] if links else [])


def test_the_stores_port_never_is_the_ranks_rendezvous_port(monkeypatch):
    monkeypatch.setattr(batch, "slurm", lambda *args: "node0 node1")
    ranks = {batch.rendezvous(job, "node[0-1]")[1] for job in range(40000)}
    assert not ranks & {link_port(job) for job in range(40000)}


def test_a_node_that_cannot_reach_the_stores_host_has_the_problem_and_a_silent_store_blames_nobody():
    check = LinkCheck(rank=1, nodes=3, node="node1", store_host="127.0.0.1", port=free_port(), join_timeout_s=1)
    assert _unreachable(check, RuntimeError("timed out")) == []  # the host answers, nothing listens: its own node is late
    assert _unreachable(replace(check, rank=0), RuntimeError("address in use")) == []  # the store's own node cannot host it
    gone = replace(check, store_host="no-such-node.invalid")  # unreachable without waiting for a connect timeout
    assert _unreachable(gone, RuntimeError("timed out"))[0].startswith("cannot reach no-such-node.invalid, the first node")


def test_a_group_that_cannot_form_blames_nobody(rounds, capfd):
    """The first node waiting for one that never joins; a node whose connection the first node's host
    refuses (its check never listened). Real stores, one-second timeouts; after `rounds`, so that the
    processes it forks never inherit a store's threads."""
    alone = LinkCheck(rank=0, nodes=2, node="node0", store_host="127.0.0.1", port=free_port(), join_timeout_s=1)
    assert check_links(alone) == []
    assert check_links(replace(alone, rank=1, node="node1", port=free_port())) == []
    said = capfd.readouterr().err
    assert "preflight on node0: link check skipped: node rank(s) 1 did not join within 1 s" in said
    assert "preflight on node1: link check skipped: nothing listened on 127.0.0.1:" in said
