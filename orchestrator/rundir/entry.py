"""How the control plane starts the node plane: by argv, never by import.

`python -m launch.node ...` runs on each node (started by `orch run` locally, by srun under
Slurm) and starts that node's ranks as `python -m launch.rank --run-dir DIR`; everything else a
rank needs it reads from the run directory.
"""

from __future__ import annotations

import signal
from pathlib import Path

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
"""Preemption signals: whoever starts the node plane (the Slurm batch step, `orch run`, a node
launcher) passes each on; a rank checkpoints and stops with EXIT_REQUEUE on the first."""

NODE_MODULE = "launch.node"
ATTACHED_FLAG = "--attached"
"""The node launcher's stdin is a pipe from `orch run`: end of file there means the CLI is gone."""
RANK_MODULE = "launch.rank"


def node_argv(
    python: str, backend: str, nodes: int, procs_per_node: int, run_dir: Path | str, master_addr: str, master_port: int | str,
    node_rank: int | None = None, attached: bool = False,
) -> list[str]:
    """The command that runs the node launcher on one node; without `node_rank`, Slurm's node id is used.
    `attached`: started by a local `orch run`, whose end stops the ranks after a checkpoint (never
    under Slurm, where srun and the batch step own the launcher's life)."""
    argv = [python, "-m", NODE_MODULE, "--backend", backend, "--nnodes", str(nodes)]
    if node_rank is not None:
        argv += ["--node-rank", str(node_rank)]
    if attached:
        argv.append(ATTACHED_FLAG)
    return argv + [
        "--nproc", str(procs_per_node), "--master-addr", str(master_addr), "--master-port", str(master_port), "--run-dir", str(run_dir),
    ]


def rank_argv(python: str, run_dir: Path | str) -> list[str]:
    return [python, "-m", RANK_MODULE, "--run-dir", str(run_dir)]
