"""The preflight's last check: one all-reduce across the allocation, and each node's links to its
ring neighbours timed against the other links (`orchestrator.slurm.preflight` runs it on every
node after the local checks, when the allocation has `MIN_NODES` or more).

A node whose network port is degraded (a NIC renegotiated to a lower speed, a flapping cable, a
misrouted interface) passes every local check and then slows every collective of the job. Here the
nodes join one process group (NCCL on GPU plans, so the links timed are the ones the ranks' NCCL
will use; gloo on CPU plans) and time, in up to three phases so that no node serves two links at
once, a ping-pong of `BUFFER_BYTES` between each node and the next one in the ring. A node both of
whose links are slower than `SLOW_RATIO` x the median of the links that do not touch it, and slower
than `SLOW_FLOOR_S` (so that noise on a fast network's tiny times fails nobody), is named. One slow
link alone names nobody: either of its ends may be at fault. The first node says the
all-reduce's time and bus bandwidth, and the links' median and slowest, in the job's log.

Joining: the first node of the allocation (the batch step's own node) hosts the store, at a port
derived from the job id outside the range the ranks' rendezvous takes (`link_port`). The choices
when the group cannot form within `JOIN_TIMEOUT_S`:
- a node that cannot reach the store's host at all (no route, no answer, its name does not
  resolve) has the problem itself: the batch step's srun, on that host, reached every node, so a
  healthy node can reach it too (a firewall that drops, rather than refuses, connections to a port
  nothing listens on makes a late first node look unreachable: every node would be named);
- a node whose connection is refused until the timeout (the host answers, the store never
  listened: the first node's preflight is late, did not start or failed) blames nobody: that node
  answers for itself, and blaming the others would leave every node out;
- nodes that joined while another never did blame nobody and skip the timing: the absent node
  answers for itself (or gives no answer, which the batch step counts as its problem).
A collective that fails after the group formed blames nobody either: either end may have stopped it.

`ORCH_PREFLIGHT_SLOW_LINK=NODE:SECONDS` (read by this check only) makes NODE wait SECONDS before
each of its sends: both of its links turn slow, for tests and fault drills of the exclusion.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

from orchestrator.slurm.probe import bus_bandwidth_gbps

SLOW_LINK_VARIABLE = "ORCH_PREFLIGHT_SLOW_LINK"
BUFFER_BYTES = 4 * 2**20
PING_PONGS = 5
"""Round trips timed per link; the median counts, so one descheduled round trip names nobody."""
MIN_NODES = 3
"""With two, neither node can be told apart from its only neighbour, and the ranks' own rendezvous
finds one that cannot be reached: the check's torch import and process group would cost every
two-node job seconds for a figure only."""
SLOW_RATIO = 4.0
SLOW_FLOOR_S = 0.05
"""A round trip of 4 MiB: well under 1 ms on a healthy InfiniBand link, 7 ms at 10 Gb/s, past 60 ms on a
NIC fallen back to 1 Gb/s; and above what loopback links of a loaded machine take (5-18 ms seen)."""
JOIN_TIMEOUT_S = 60.0
"""How long a node waits for the others to join: the nodes' local checks (the recipe's own health
check may take minutes) end at different times."""
COLLECTIVE_TIMEOUT_S = 30.0
PORT_BASE = 40000
"""The store's ports: 40000..59999, above the ranks' rendezvous (`orchestrator.slurm.batch.rendezvous`
takes 20000..39999), so a preflight's store never holds the port the ranks are about to bind."""


def link_port(job_id: int) -> int:
    return PORT_BASE + job_id % 20000


@dataclass(frozen=True, kw_only=True)
class LinkCheck:
    """One node's part of the check: its place in the allocation and where the store is."""

    rank: int
    nodes: int
    node: str
    store_host: str
    port: int
    cuda: bool = False
    delay_s: float = 0.0
    """Injected before each of this node's sends (`ORCH_PREFLIGHT_SLOW_LINK`)."""
    join_timeout_s: float = JOIN_TIMEOUT_S


def injected_delay_s(value: str | None, node: str) -> float:
    """The delay `ORCH_PREFLIGHT_SLOW_LINK` asks of `node`: 0 when it names another node or is unset."""
    if not value:
        return 0.0
    name, _, seconds = value.rpartition(":")
    try:
        delay = float(seconds)
    except ValueError:
        delay = -1.0
    if not name or delay < 0:
        raise ValueError(f"{SLOW_LINK_VARIABLE}: {value!r} is not NODE:SECONDS")
    return delay if name == node else 0.0


def slow_nodes(link_s: list[float], ratio: float = SLOW_RATIO, floor_s: float = SLOW_FLOOR_S) -> dict[int, str]:
    """The nodes both of whose ring links are slow, each with the times that say so. `link_s[k]` is
    the round trip between node k and node k+1 (mod the node count)."""
    count = len(link_s)
    if count < 3:
        return {}
    slow = {}
    for node in range(count):
        before, after = link_s[node - 1], link_s[node]
        others = [t for k, t in enumerate(link_s) if k not in (node, (node - 1) % count)]
        limit = max(ratio * statistics.median(others), floor_s)
        if min(before, after) > limit:
            slow[node] = (f"{before * 1e3:.1f} ms and {after * 1e3:.1f} ms against a median of "
                          f"{statistics.median(others) * 1e3:.1f} ms for the other links (over {limit * 1e3:.1f} ms is slow)")
    return slow


def check_links(check: LinkCheck) -> list[str]:
    """This node's problems from the check (empty when healthy or when it cannot say); the timings
    go to standard error, which the batch step leaves in the job's log."""
    import torch.distributed as dist

    try:
        store = dist.TCPStore(check.store_host, check.port, None, check.rank == 0, timeout=timedelta(seconds=check.join_timeout_s),
                              wait_for_workers=False)
    except (RuntimeError, ValueError) as exc:
        return _unreachable(check, exc)
    names = _joined(store, check)
    if names is None:
        return []
    try:
        if check.cuda:
            import torch

            torch.cuda.set_device(0)  # the step runs one task per node: its first GPU carries the node's links
        dist.init_process_group("nccl" if check.cuda else "gloo", store=dist.PrefixStore("links", store), rank=check.rank,
                                world_size=check.nodes, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        link_s = _timed(check)
    except (RuntimeError, ValueError) as exc:
        _note(check, f"link check stopped: {exc}")
        return []
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    verdict = slow_nodes(link_s)
    mine = verdict.get(check.rank)
    return [f"slow links to its ring neighbours {names[check.rank - 1]} and {names[(check.rank + 1) % check.nodes]}: {mine}"] if mine else []


def _joined(store, check: LinkCheck) -> list[str] | None:
    """Every node's name, by rank, once all have joined; None, said in the log, when one did not in time."""
    keys = [f"node/{r}" for r in range(check.nodes)]
    try:
        store.set(keys[check.rank], check.node)
        store.wait(keys)
        return [store.get(key).decode() for key in keys]
    except (RuntimeError, ValueError):
        try:
            absent = ", ".join(str(r) for r, key in enumerate(keys) if not store.check([key]))
        except (RuntimeError, ValueError):
            absent = "?"  # the first node gave up waiting first, and its store closed
        _note(check, f"link check skipped: node rank(s) {absent} did not join within {check.join_timeout_s:.0f} s")
        return None


def _unreachable(check: LinkCheck, exc: Exception) -> list[str]:
    """After the store could not be joined: the node's own problem when the store's host cannot be
    reached at all; nobody's when the host answers but nothing listens (see the module's docstring)."""
    if check.rank == 0:
        _note(check, f"link check skipped: could not host its store on port {check.port}: {exc}")
        return []
    try:
        socket.create_connection((check.store_host, check.port), timeout=5).close()
    except ConnectionRefusedError:
        _note(check, f"link check skipped: nothing listened on {check.store_host}:{check.port} within {check.join_timeout_s:.0f} s")
        return []
    except OSError as err:
        return [f"cannot reach {check.store_host}, the first node of the allocation: {err}"]
    _note(check, f"link check skipped: {check.store_host}:{check.port} answered too late ({exc})")
    return []


def _timed(check: LinkCheck) -> list[float]:
    """The all-reduce's time (reported by the first node), then every ring link's median round trip,
    known to every node."""
    import torch
    import torch.distributed as dist

    device = "cuda" if check.cuda else "cpu"
    sync = torch.cuda.synchronize if check.cuda else (lambda: None)
    buffer = torch.ones(BUFFER_BYTES // 4, device=device)
    dist.all_reduce(buffer)  # the first collective sets the connections up
    dist.barrier()
    sync()
    tic = time.perf_counter()
    dist.all_reduce(buffer)
    sync()
    all_reduce_s = time.perf_counter() - tic
    link_s = torch.zeros(check.nodes, dtype=torch.float64, device=device)
    if check.nodes >= 3:
        for phase in range(3):
            if _phase(check.rank, check.nodes) == phase:
                link_s[check.rank] = _round_trip(buffer, (check.rank + 1) % check.nodes, True, check.delay_s, sync)
            if _phase((check.rank - 1) % check.nodes, check.nodes) == phase:
                _round_trip(buffer, (check.rank - 1) % check.nodes, False, check.delay_s, sync)
            dist.barrier()
    dist.all_reduce(link_s)
    times = link_s.tolist()
    if check.rank == 0:
        links = f"; ring links {statistics.median(times) * 1e3:.1f} ms median, {max(times) * 1e3:.1f} ms slowest" if check.nodes >= 3 else ""
        _note(check, f"one all-reduce of {BUFFER_BYTES // 2**20} MiB across {check.nodes} nodes took {all_reduce_s * 1e3:.1f} ms "
                     f"({bus_bandwidth_gbps(BUFFER_BYTES, check.nodes, all_reduce_s):.2f} GB/s bus bandwidth){links}")
    return times


def _phase(link: int, nodes: int) -> int:
    """Links of one phase share no node: alternate, and a third phase for the ring's closing link when the count is odd."""
    return 2 if nodes % 2 and link == nodes - 1 else link % 2


def _round_trip(buffer, peer: int, first: bool, delay_s: float, sync) -> float:
    """The median of `PING_PONGS` round trips of `buffer` with `peer`, after one untimed; `first` sends first."""
    import torch.distributed as dist

    times = []
    for _ in range(PING_PONGS + 1):
        tic = time.perf_counter()
        for sending in ((True, False) if first else (False, True)):
            if sending:
                time.sleep(delay_s)
                dist.send(buffer, peer)
            else:
                dist.recv(buffer, peer)
            sync()
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:])


def _note(check: LinkCheck, message: str) -> None:
    """A line of the job's log (the check's standard error)."""
    print(f"preflight on {check.node}: {message}", file=sys.stderr, flush=True)
