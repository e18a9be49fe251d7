"""How the control plane starts the node plane: by argv, never by import.

`python -m launch.node ...` runs on each node (started by `orch run` locally, by srun under
Slurm) and starts that node's ranks as `python -m launch.rank --run-dir DIR`; everything else a
rank needs it reads from the run directory.

Every Python process orch starts (these, and the Slurm jobs' `python -m orchestrator...`) starts
through `module_argv`, with the safe-path option: `python -m` otherwise puts the working directory
first on `sys.path`, so a `launch.py` or an `orchestrator/` folder where the user types `orch run`
would run in place of the project's modules (and a `torch.py` in place of torch).
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

SAFE_PATH = ("-P",)
"""No working directory on `sys.path` (Python 3.11+, which the project requires for it): the project is
found where it is installed (site-packages, or an editable install's finder), as by the `orch` script.
The interpreter started is always this one (`EnvSnapshot.python`, or the launcher's and the batch step's
own `sys.executable`)."""


def module_argv(python: str, module: str, *arguments: str) -> list[str]:
    """`python -P -m module arguments...`: a module of an installed package, never one of the working directory."""
    return [python, *SAFE_PATH, "-m", module, *arguments]


def node_argv(
    python: str, backend: str, nodes: int, procs_per_node: int, run_dir: Path | str, master_addr: str, master_port: int | str,
    node_rank: int | None = None, attached: bool = False,
) -> list[str]:
    """The command that runs the node launcher on one node; without `node_rank`, Slurm's node id is used.
    `attached`: started by a local `orch run`, whose end stops the ranks after a checkpoint (never
    under Slurm, where srun and the batch step own the launcher's life)."""
    argv = module_argv(python, NODE_MODULE, "--backend", backend, "--nnodes", str(nodes))
    if node_rank is not None:
        argv += ["--node-rank", str(node_rank)]
    if attached:
        argv.append(ATTACHED_FLAG)
    return argv + [
        "--nproc", str(procs_per_node), "--master-addr", str(master_addr), "--master-port", str(master_port), "--run-dir", str(run_dir),
    ]


def rank_argv(python: str, run_dir: Path | str) -> list[str]:
    return module_argv(python, RANK_MODULE, "--run-dir", str(run_dir))
