"""The `slurm` section: what `orch submit` asks the scheduler for, and how preemption is handled."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from orchestrator.spec import Spec


class SlurmSpec(Spec):
    """Nodes come from `distributed.nodes`; one launcher task per node starts that node's ranks.

    `signal` defaults to USR2: NCCL may install its own SIGUSR1 handler, which is why submitit
    chose USR2 too. Slurm sends it `signal_grace_s` before the time limit (raised to twice the
    longest measured checkpoint commit when the run directory has one).
    """

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_limit: Optional[str] = Field(None, description="Slurm time format, e.g. 04:00:00 or 1-00:00:00")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: Optional[int] = Field(None, gt=0)
    mem: Optional[str] = Field(None, description="per node, e.g. 64G")
    constraint: Optional[str] = None
    exclusive: bool = False
    extra_directives: list[str] = []
    modules: list[str] = []
    setup: list[str] = Field([], description="shell lines run before training, e.g. exports")
    venv: Optional[Path] = Field(None, description="virtualenv to activate on the nodes (default: the submitting one)")
    signal: Literal["USR1", "USR2", "TERM"] = "USR2"
    signal_grace_s: int = Field(120, gt=0)
    max_requeues: int = Field(3, ge=0)
