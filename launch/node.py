"""Per-node launcher: `python -m launch.node --backend B --nnodes N --node-rank R --nproc P ...`
(its argv is built by `orchestrator.rundir.entry.node_argv`).

Starts this node's ranks (see `launch.spawn` for how) with the standard variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) plus whatever the backend's `launch.engines` module adds (Horovod: the HOROVOD_*
ones, and the first node serving its Gloo rendezvous on the master port), the same way locally
and on every Slurm node; forwards preemption signals to them, and turns their exits into one exit code:
0 when all finished, EXIT_REQUEUE when all checkpointed and stopped on a signal, otherwise the
first failure. A rank that crashes takes its peers down at once (SIGKILL): they would otherwise
hang in a collective, and checkpoints are atomic, so killing them loses nothing committed.
Ranks that stop making progress without ending (a stopped process, a stuck collective) are found by
the watchdog (`launch.watchdog`), which writes their stacks and ends them all: EXIT_HANG.
After such a fault, a launcher that runs the whole job (`--nnodes 1`) starts the ranks again, and
they resume from the newest verified checkpoint (`launch.restarts`: how often, and what is not
restarted); its exit code is then the last attempt's.
torchrun and horovodrun cannot be used here: both die on SIGUSR1 and report any non-zero rank as 1.
What it does (ranks started, signals forwarded, exits) it says on its standard output, the run's
`logs/launcher.log` locally and `logs/node-<name>.out` on Slurm (`launch.launcher_log`).

Started by a local `orch run` (`--attached`), it also stops the ranks after a checkpoint when that
CLI dies: it runs in its own session, so a SIGKILL, the OOM killer or a closed terminal's SIGHUP
reaches the CLI alone, and the ranks would otherwise train on as orphans.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from launch import rank_errors
from launch.engines import ENGINES, backend_module
from launch.launcher_log import say
from launch.restarts import Restarts
from launch.spawn import Rank, start_ranks
from launch.watchdog import NoWatchdog, Watchdog, watching
from orchestrator.errors import EXIT_HANG, EXIT_REQUEUE
from orchestrator.rundir import events
from orchestrator.rundir.entry import ATTACHED_FLAG, FORWARDED_SIGNALS
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_recipe
from orchestrator.rundir.recovery_events import AttemptStarted


POLL_S = 0.05
"""How often the launcher looks at its ranks: a crash waits half of it on average to be noticed, of a
restart that takes about 1 s; each look costs a wait and a read of each rank's progress record."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=sorted(ENGINES), default="deepspeed")
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--node-rank", type=int, default=int(os.environ.get("SLURM_NODEID", 0)),
                        help="this node's index (default: Slurm's SLURM_NODEID, else 0)")
    parser.add_argument("--nproc", type=int, required=True)
    parser.add_argument("--master-addr", required=True)
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument(ATTACHED_FLAG, action="store_true",
                        help="started by `orch run`, which holds this process's stdin: its end means the CLI is gone")
    args = parser.parse_args()
    code = run_node(args)
    say(f"node {args.node_rank} exits {code}" + (" (the ranks checkpointed and stopped on a signal)" if code == EXIT_REQUEUE else ""))
    # The ranks have exited and everything they wrote is closed. Skip interpreter finalisation:
    # tearing down the torch, DeepSpeed and transformers modules a forking launcher preloaded
    # takes seconds on 2 cores, at the end of every run and every attempt.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_node(args: argparse.Namespace) -> int:
    """The node's attempts: the first, then, after a fault, as many restarts as `launch.restarts` allows."""
    backend = backend_module(args.backend)
    run = RunDir(args.run_dir)
    # For the launcher itself as for its ranks (which inherit its environment): a forking launcher's
    # preload loads DeepSpeed's CPU op, which must come from where the ranks find it, not be built afresh.
    os.environ.update(toolchain_env(os.environ))
    say(f"node {args.node_rank} of {args.nnodes} ({args.backend}, {args.nproc} rank(s) here), rendezvous {args.master_addr}:{args.master_port}")
    first = args.node_rank * args.nproc
    ranks: list[Rank] = []
    stop: list[int] = []  # the signal that asked this node to stop: the attempt ends as asked, and none follows

    def forward(signum, _frame):
        stop.append(signum)
        _forward(ranks, first, signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    if args.attached:
        threading.Thread(target=_stop_when_cli_ends, name="cli-watch", daemon=True).start()
    restarts = Restarts(run, read_recipe(run).fault_tolerance, args.node_rank, args.nnodes)
    while True:
        attempt = restarts.begin()
        if args.node_rank == 0:  # one per attempt: where the goodput ledger's start-up (or restart) begins
            events.append(run.events, AttemptStarted(attempt=attempt))
        code = _attempt(args, backend, first, ranks, stop, restarts.rank_env)
        if stop or not restarts.after(code, ranks, first):
            return code
        say(f"restarting: the ranks start again and resume from the newest verified checkpoint (same rendezvous port {args.master_port})")


def _attempt(args: argparse.Namespace, backend, first: int, ranks: list[Rank], stop: list[int], carried_env: dict[str, str]) -> int:
    """Start this node's ranks (into `ranks`), with what earlier attempts hand them (`carried_env`), and
    wait for their end; the launcher's exit code for it."""
    if stop:  # asked to stop between two attempts: the checkpoints stand, as after a preemption
        return EXIT_REQUEUE
    with backend.node_services(args.nnodes, args.nproc, args.node_rank, args.master_port), \
            watching(args.run_dir, args.node_rank, first) as watchdog:
        rank_errors.clear(RunDir(args.run_dir), range(first, first + args.nproc))
        ranks[:] = start_ranks(args.run_dir, backend, [{**_rank_env(args, backend, local), **watchdog.rank_env, **carried_env}
                                                       for local in range(args.nproc)])
        if stop:  # the signal came while they started
            _forward(ranks, first, stop[0])
        return _wait(ranks, first, watchdog)


def _forward(ranks: list[Rank], first: int, signum: int) -> None:
    live = [local for local, rank in enumerate(ranks) if rank.poll() is None]
    for local in live:
        ranks[local].send_signal(signum)
    say(f"{signal.Signals(signum).name} forwarded to {_ranks(live, first)}")


def _stop_when_cli_ends() -> None:
    """Wait for end of file on stdin, a pipe whose only writer is `orch run`: the kernel closes it
    when the CLI dies, however it dies. Then stop as on a preemption: SIGTERM to this launcher,
    which forwards it, and the ranks checkpoint and stop."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    say("orch run is gone; the ranks checkpoint and stop, as on SIGTERM")
    os.kill(os.getpid(), signal.SIGTERM)


def _rank_env(args: argparse.Namespace, backend, local: int) -> dict[str, str]:
    return {
        **os.environ,
        "RANK": str(args.node_rank * args.nproc + local),
        "LOCAL_RANK": str(local),
        "WORLD_SIZE": str(args.nnodes * args.nproc),
        "LOCAL_WORLD_SIZE": str(args.nproc),
        "GROUP_RANK": str(args.node_rank),
        "NODE_RANK": str(args.node_rank),
        "MASTER_ADDR": args.master_addr,
        "MASTER_PORT": str(args.master_port),
        **backend.rank_env(args.nnodes, args.nproc, args.node_rank, local, args.master_addr, args.master_port),
    }


def toolchain_env(environ: dict[str, str]) -> dict[str, str]:
    """Where a rank finds the DeepSpeed op that scripts/setup.sh built, so that it does not compile it afresh
    (bench/bare_deepspeed.py's ranks get the same)."""
    return {
        # This interpreter's bin first, unresolved (a virtualenv's python is a symlink): DeepSpeed
        # compiles its CPU op with the first `ninja` on PATH, and two ninja versions log different
        # hashes for the same command, so ranks started with and without an activated virtualenv
        # would each rebuild it (a minute) after the other. scripts/setup.sh builds it the same way.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", os.defpath)]),
        # Extensions DeepSpeed compiles belong to this interpreter's environment: two virtualenvs
        # sharing ~/.cache/torch_extensions would rebuild over each other at every start.
        "TORCH_EXTENSIONS_DIR": environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions")),
    }


def _wait(ranks: list[Rank], first: int, watchdog: Watchdog | NoWatchdog) -> int:
    """Until every rank has ended, or one failed (its peers then killed), or the watchdog found them
    hung (all then killed: EXIT_HANG); each end is logged once. `first` is the global rank of `ranks[0]`."""
    reported: set[int] = set()
    while True:
        codes = [rank.poll() for rank in ranks]
        for local, code in enumerate(codes):
            if code is not None and local not in reported:
                reported.add(local)
                say(f"rank {first + local} (pid {ranks[local].pid}) {_ended(code)}")
        failed = [c for c in codes if c not in (None, 0, EXIT_REQUEUE)]
        if failed:
            _kill(ranks, first, "a peer failed, and they would hang in a collective")
            return failed[0] if failed[0] > 0 else 128 - failed[0]
        if all(c is not None for c in codes):
            return EXIT_REQUEUE if EXIT_REQUEUE in codes else 0
        if watchdog.check(ranks):
            _kill(ranks, first, "they hung (a stopped rank's process too: SIGKILL needs no answer)")
            return EXIT_HANG
        time.sleep(POLL_S)


def _kill(ranks: list[Rank], first: int, why: str) -> None:
    """SIGKILL every live rank and reap them all: checkpoints are atomic, so nothing committed is lost."""
    live = [local for local, rank in enumerate(ranks) if rank.poll() is None]
    if live:
        say(f"killing {_ranks(live, first)}: {why}")
    for local in live:
        ranks[local].kill()
    for rank in ranks:
        rank.wait()


def _ranks(local_ranks: list[int], first: int) -> str:
    return f"rank(s) {', '.join(str(first + local) for local in local_ranks)}" if local_ranks else "no rank (all had ended)"


def _ended(code: int) -> str:
    if code == 0:
        return "finished"
    if code == EXIT_REQUEUE:
        return f"checkpointed and stopped (exit {EXIT_REQUEUE})"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"failed (exit {code})"


if __name__ == "__main__":
    main()
