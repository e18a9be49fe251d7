"""The local Slurm cluster a test session uses, and the checks that the session leaves nothing running.

`make test` starts the cluster (`slurm/dev-cluster.sh up`: slurmctld, two slurmd, munged, all as
root) for the integration tier; a session that started it stops it at its end, and one that found
it up leaves it as it was. After the session, no process it started may still run: neither a Slurm
daemon nor anything whose command line names the session's temporary directory (a job's batch step,
launchers and ranks; a local run a test started).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

CLUSTER_DAEMONS = ("slurmctld", "slurmd")
"""The cluster is up when one of these runs, whoever started it."""
STARTED_WITH_IT = (*CLUSTER_DAEMONS, "slurmscriptd", "slurmstepd", "munged")
"""What `up` and the jobs on the cluster start."""
EXIT_WAIT_S = 30
"""How long a process that is being stopped may take to go before it counts as left running."""


def running(names: Iterable[str]) -> set[psutil.Process]:
    """The live processes with these names (zombies are gone in all but name). A process compares by
    pid and start time, so one that reused a pid is another."""
    wanted = set(names)
    return {p for p in psutil.process_iter(["name", "status"]) if p.info["name"] in wanted and p.info["status"] != psutil.STATUS_ZOMBIE}


def naming(text: str) -> list[psutil.Process]:
    """The live processes, other than this one, whose command line contains `text`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.pid != psutil.Process().pid and process.info["status"] != psutil.STATUS_ZOMBIE \
                and text in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def left_running(processes: list[psutil.Process]) -> list[str]:
    """Those of `processes` still alive after up to EXIT_WAIT_S, each as `pid command line`."""
    _, alive = psutil.wait_procs(processes, timeout=EXIT_WAIT_S)
    described = []
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended since the wait
            described.append(f"{process.pid} {' '.join(process.cmdline()) or process.name()}")
    return described


@contextmanager
def session_cluster(script: Path, cluster: tuple[str, ...] = CLUSTER_DAEMONS,
                    started_with_it: tuple[str, ...] = STARTED_WITH_IT) -> Iterator[bool]:
    """The cluster up for the block, which gets whether it was started here. One started here is
    stopped after the block (`script down`), and then none of the daemons it started may run."""
    before = running(started_with_it)
    ours = not running(cluster)
    up = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield ours
    finally:
        if ours:
            down = subprocess.run(["bash", str(script), "down"], capture_output=True, text=True, timeout=300)
            assert down.returncode == 0, down.stdout + down.stderr
            left = left_running(list(running(started_with_it) - before))
            assert not left, f"{script.name} down left the daemons the tests started running: {left}"
