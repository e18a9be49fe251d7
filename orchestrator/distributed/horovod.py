"""The Horovod backend: its config, rendered from the recipe, its launch, and its Gloo rendezvous.

On one machine `horovodrun` starts the ranks. Across Slurm nodes there is no ssh to rely on, so the
job does what `horovodrun` does internally instead: one `orchestrator.runtime.node` launcher per node
(started by srun) gives each rank the HOROVOD_* variables, and the first node serves Horovod's Gloo
rendezvous (its own `RendezvousHTTPServer`) on the job's rendezvous port.
"""

from __future__ import annotations

import socket
from pathlib import Path

from orchestrator.plan.arithmetic import Batch, Topology
from orchestrator.recipe.schema import Recipe

CONFIG_FILE = "horovod_config.json"
STATE_DIR = "horovod"
STATE_FILE = "state.pt"
"""A checkpoint's Horovod state (`horovod/state.pt`): the whole model and optimizer, once, so it loads at any world size."""
INSTALL_HINT = "Horovod is not installed: run `make horovod` (builds Horovod 0.28.1 with PyTorch and Gloo; see the README)"
GLOO_TIMEOUT_S = 120


def horovod_config(recipe: Recipe, batch: Batch) -> dict:
    """What each rank's `hvd.DistributedOptimizer` and optimizer are built from."""
    train, dist = recipe.train, recipe.distributed
    return {
        "backward_passes_per_step": batch.gradient_accumulation_steps,
        "compression": dist.compression,
        "optimizer": {
            "type": "AdamW",
            "lr": train.optimizer.lr,
            "betas": list(train.optimizer.betas),
            "eps": train.optimizer.eps,
            "weight_decay": train.optimizer.weight_decay,
        },
        "gradient_clipping": train.grad_clip,
        "precision": train.precision,
    }


class HorovodLauncher:
    backend = "horovod"
    install_hint = INSTALL_HINT

    def config_files(self, recipe: Recipe, batch: Batch, load_universal: bool = False) -> dict[str, dict]:
        # Every rank holds the whole state, so a checkpoint loads at any world size: no conversion.
        return {CONFIG_FILE: horovod_config(recipe, batch)}

    def local_command(self, python: str, topology: Topology, run_dir: Path, port: int) -> list[str]:
        procs = topology.procs_per_node
        return [
            str(Path(python).parent / "horovodrun"), "--gloo", "-np", str(procs), "-H", f"localhost:{procs}",
            "--gloo-timeout-seconds", str(GLOO_TIMEOUT_S),
            python, "-m", "orchestrator.runtime", "--run-dir", str(run_dir),
        ]


def slot_hostname(node_rank: int) -> str:
    """The name a node goes by in the rendezvous. Only a key (Horovod groups ranks by it), so node
    launchers can all derive it without asking one another."""
    return f"node{node_rank}"


def rank_env(nodes: int, procs_per_node: int, node_rank: int, local_rank: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The variables `horovodrun` would give this rank (see horovod.runner.gloo_run)."""
    return {
        "HOROVOD_HOSTNAME": slot_hostname(node_rank),
        "HOROVOD_RANK": str(node_rank * procs_per_node + local_rank),
        "HOROVOD_SIZE": str(nodes * procs_per_node),
        "HOROVOD_LOCAL_RANK": str(local_rank),
        "HOROVOD_LOCAL_SIZE": str(procs_per_node),
        "HOROVOD_CROSS_RANK": str(node_rank),
        "HOROVOD_CROSS_SIZE": str(nodes),
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": master_addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(master_port),
        "HOROVOD_GLOO_IFACE": interface_towards(master_addr),
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(GLOO_TIMEOUT_S),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
    }


def interface_towards(address: str) -> str:
    """The network interface this host reaches `address` through: Gloo's ranks connect to one another
    on it, and it must be one every node can route to."""
    import psutil

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(address), 9))
        local_ip = probe.getsockname()[0]
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local_ip for a in addresses):
            return name
    raise RuntimeError(f"no network interface holds {local_ip}, the address this host uses to reach {address}")


class Rendezvous:
    """Horovod's Gloo rendezvous for the whole job, served by the first node's launcher."""

    def __init__(self, nodes: int, procs_per_node: int, port: int):
        import threading

        from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
        from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

        hosts = ",".join(f"{slot_hostname(n)}:{procs_per_node}" for n in range(nodes))
        self.server = RendezvousHTTPServer(("", port), RendezvousHandler, 0)
        self.server.init(get_host_assignments(parse_hosts(hosts), nodes * procs_per_node))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
