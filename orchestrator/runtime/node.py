"""Per-node launcher: `python -m orchestrator.runtime.node --backend B --nnodes N --node-rank R --nproc P ...`.

Starts this node's ranks with the standard variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT; for Horovod also the HOROVOD_* ones, with the first node serving Horovod's Gloo
rendezvous on the master port), forwards preemption signals to them, and turns their exits into one exit code:
0 when all finished, REQUEUE_EXIT when all checkpointed and stopped on a signal, otherwise the
first failure. A rank that crashes takes its peers down at once (SIGKILL): they would otherwise
hang in a collective, and checkpoints are atomic, so killing them loses nothing committed.
torchrun and horovodrun cannot be used here: both die on SIGUSR1 and report any non-zero rank as 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.runtime.signals import FORWARDED_SIGNALS, REQUEUE_EXIT


BACKENDS = ("deepspeed", "horovod")


def node_argv(
    python: str, backend: str, nodes: int, procs_per_node: int, run_dir: Path | str, master_addr: str, master_port: int | str,
    node_rank: int | None = None,
) -> list[str]:
    """The command that runs this module on one node; without `node_rank`, Slurm's node id is used."""
    argv = [python, "-m", "orchestrator.runtime.node", "--backend", backend, "--nnodes", str(nodes)]
    if node_rank is not None:
        argv += ["--node-rank", str(node_rank)]
    return argv + [
        "--nproc", str(procs_per_node), "--master-addr", str(master_addr), "--master-port", str(master_port), "--run-dir", str(run_dir),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, default="deepspeed")
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--node-rank", type=int, default=int(os.environ.get("SLURM_NODEID", 0)),
                        help="this node's index (default: Slurm's SLURM_NODEID, else 0)")
    parser.add_argument("--nproc", type=int, required=True)
    parser.add_argument("--master-addr", required=True)
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()
    sys.exit(run_node(args))


def run_node(args: argparse.Namespace) -> int:
    world = args.nnodes * args.nproc
    rendezvous = None
    if args.backend == "horovod" and args.node_rank == 0:
        from orchestrator.distributed.horovod import Rendezvous

        rendezvous = Rendezvous(args.nnodes, args.nproc, args.master_port)
    ranks = []
    for local in range(args.nproc):
        env = {
            **os.environ,
            "RANK": str(args.node_rank * args.nproc + local),
            "LOCAL_RANK": str(local),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(args.nproc),
            "GROUP_RANK": str(args.node_rank),
            "NODE_RANK": str(args.node_rank),
            "MASTER_ADDR": args.master_addr,
            "MASTER_PORT": str(args.master_port),
            # Extensions DeepSpeed compiles belong to this interpreter's environment: two virtualenvs
            # sharing ~/.cache/torch_extensions would rebuild over each other at every start.
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions")),
        }
        if args.backend == "horovod":
            from orchestrator.distributed.horovod import rank_env

            env.update(rank_env(args.nnodes, args.nproc, args.node_rank, local, args.master_addr, args.master_port))
        command = [sys.executable, "-m", "orchestrator.runtime", "--run-dir", str(args.run_dir)]
        ranks.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL))

    def forward(signum, _frame):
        for rank in ranks:
            if rank.poll() is None:
                rank.send_signal(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    try:
        return _wait(ranks)
    finally:
        if rendezvous:
            rendezvous.close()


def _wait(ranks: list[subprocess.Popen]) -> int:
    while True:
        codes = [rank.poll() for rank in ranks]
        failed = [c for c in codes if c not in (None, 0, REQUEUE_EXIT)]
        if failed:
            for rank in ranks:
                if rank.poll() is None:
                    rank.kill()
            for rank in ranks:
                rank.wait()
            return failed[0] if failed[0] > 0 else 128 - failed[0]
        if all(c is not None for c in codes):
            return REQUEUE_EXIT if REQUEUE_EXIT in codes else 0
        time.sleep(0.2)


if __name__ == "__main__":
    main()
