"""The `fault_tolerance` section: when a rank counts as hung, and how often a run restarts itself.

Modelled on NVIDIA's Resiliency Extension (`FaultToleranceConfig`): each phase a rank goes through
(set-up, training step, checkpoint save, evaluation) has its own timeout, fixed in seconds or
`auto`, which is `auto_factor` (NVRx's `safety_factor`, 5) times the longest this phase has taken
in the attempt, never under `auto_floor_s`. A phase not yet seen in the attempt gets the set-up
timeout: the first step compiles kernels and warms caches, and a save's first call builds its
buffers. The defaults suit a job of a thousand GPUs, where set-up alone can take many minutes;
a recipe (or a test) shortens them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from orchestrator.spec import Spec

PHASES = ("setup", "step", "checkpoint", "evaluation")
"""What a rank reports it is doing, in the order a run first meets them."""

PROCESS_GROUP_MARGIN_S = 300

Timeout = Union[Annotated[float, Field(gt=0)], Literal["auto"]]


class TimeoutsSpec(Spec):
    setup_s: float = Field(1800, gt=0)
    """From a rank's start to its first step: imports, rendezvous, engine and checkpoint load."""
    step_s: Timeout = "auto"
    checkpoint_s: Timeout = "auto"
    evaluation_s: Timeout = "auto"
    auto_factor: float = Field(5.0, ge=1)
    auto_floor_s: float = Field(300, gt=0)

    def limit_s(self, phase: str, longest_s: float | None) -> float:
        """The timeout of `phase`, given the longest it has taken so far in this attempt (None: not yet seen)."""
        fixed = getattr(self, f"{phase}_s")
        if fixed != "auto":
            return fixed
        if longest_s is None:
            return self.setup_s
        return max(self.auto_factor * longest_s, self.auto_floor_s)

    @property
    def longest_s(self) -> float:
        """The longest any phase may run before the watchdog acts, as far as the recipe fixes it."""
        return max([self.setup_s, self.auto_floor_s] + [getattr(self, f"{p}_s") for p in PHASES[1:] if getattr(self, f"{p}_s") != "auto"])


class FaultToleranceSpec(Spec):
    """`enabled: false` leaves a hung run to the process group's timeout and a failed one to its user."""

    enabled: bool = True
    max_restarts: int = Field(3, ge=0)
    """In-job restarts after a crash or hang, from the newest verified checkpoint, within `restart_window_minutes`."""
    restart_window_minutes: float = Field(60, gt=0)
    timeouts: TimeoutsSpec = TimeoutsSpec()
    max_loss_spike: Optional[float] = Field(None, gt=1)
    """A loss above this multiple of its recent median is treated as non-finite: rolled back, not trained on."""
    straggler_ratio: float = Field(1.5, gt=1)
    """A rank whose own time per step (data wait + compute) exceeds this multiple of the others' median is named a straggler."""
    straggler_window_steps: int = Field(20, ge=2)
    """The steps each rank's medians are taken over before the ranks compare them (one small collective a window)."""
    node_health_check: Optional[str] = None
    """On Slurm, a command (split into words, run without a shell) on every node before the ranks start; a non-zero exit marks the node unhealthy."""
    max_job_retries: int = Field(2, ge=0)
    """On Slurm, how often the job is requeued without the nodes that failed the health check (or were named in two failures)."""
    spare_nodes: int = Field(0, ge=0)
    """On Slurm, nodes allocated beyond `distributed.nodes`, idle until one takes the place of a bad node without a requeue."""

    @property
    def process_group_timeout_s(self) -> float:
        """Past every timeout the watchdog applies before it has seen a phase, by a margin for its
        stack dumps, so the watchdog, which dumps the stacks and names the rank, acts first; but not
        much longer (35 minutes by default, torch's own default is 30), so a rank whose launcher is
        gone cannot hold its peers for hours. A step `auto` allows longer than this (a step of over
        seven minutes) ends in the collective's timeout instead: a crash, restarted all the same."""
        return self.timeouts.longest_s + PROCESS_GROUP_MARGIN_S
