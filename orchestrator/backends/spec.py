"""The `distributed` section: which backend, how many nodes and processes, and the backend's own options.

The backend is the discriminator: `backend: deepspeed` (the default) or `backend: horovod` selects
the section's model, so each backend's options are checked against that backend alone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from orchestrator.spec import RuleViolation, Spec

DEFAULT_BACKEND = "deepspeed"


# Physical bounds past the largest clusters (about 10^5 accelerators, 8 or so to a node), so a
# slipped digit fails at `validate` rather than as an sbatch request no scheduler can grant.
MAX_NODES = 10**5
MAX_PROCS_PER_NODE = 1024


class ParallelSpec(Spec):
    nodes: int = Field(1, gt=0, le=MAX_NODES)
    procs_per_node: Union[Annotated[int, Field(le=MAX_PROCS_PER_NODE)], Literal["auto"]] = "auto"
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def partitioned_construction(self) -> bool:
        """Whether each rank constructs only its partition of the model (DeepSpeed's ZeRO-3 alone can)."""
        return False

    @model_validator(mode="after")
    def _procs_positive(self) -> "ParallelSpec":
        if isinstance(self.procs_per_node, int) and self.procs_per_node < 1:
            raise RuleViolation("procs_per_node", "procs_per_node must be at least 1, or `auto` (one per GPU, else 1)")
        return self


class DeepSpeedSpec(ParallelSpec):
    """ZeRO stage 0 is plain data parallelism; 1 shards optimizer states, 2 also gradients, 3 also parameters."""

    backend: Literal["deepspeed"] = "deepspeed"
    zero3_init: bool = True
    """ZeRO-3 only: each rank constructs (or loads) only its own partition of the parameters, inside
    `deepspeed.zero.Init`, so a model larger than one rank's memory can be built at all. Off, every
    rank first builds the whole model, as at stages 0-2 (for models whose construction zero.Init
    cannot intercept; accelerate names the same switch `zero3_init_flag`)."""

    @property
    def partitioned_construction(self) -> bool:
        return self.zero_stage == 3 and self.zero3_init

    @model_validator(mode="after")
    def _options_need_their_stage(self) -> "DeepSpeedSpec":
        if not self.zero3_init and self.zero_stage != 3:
            raise RuleViolation("zero3_init", "zero3_init applies to zero_stage 3 only (stages 0-2 keep whole replicas): remove it")
        if self.offload_optimizer and self.zero_stage == 0:
            raise RuleViolation("offload_optimizer", "offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise RuleViolation("offload_params", "offload_params needs zero_stage 3 (only ZeRO-3 partitions parameters)")
        return self


class HorovodSpec(ParallelSpec):
    """Plain data parallelism with an all-reduce of the gradients: every rank holds the whole model and
    optimizer (what DeepSpeed calls ZeRO stage 0, the only stage Horovod has)."""

    backend: Literal["horovod"]
    zero_stage: int = 0
    compression: Literal["none", "fp16"] = "none"
    """`fp16` halves the bytes of each gradient all-reduce, at some precision."""
    reduction: Literal["average", "adasum"] = "average"
    """How gradients combine across ranks. Horovod's `adasum` exists only with its MPI controller; the
    orchestrator launches Horovod over Gloo (no MPI or ssh needed across Slurm nodes), so it is refused."""

    @model_validator(mode="after")
    def _no_deepspeed_options(self) -> "HorovodSpec":
        if self.zero_stage != 0:
            raise RuleViolation(
                "zero_stage",
                f"ZeRO stage {self.zero_stage} exists only on DeepSpeed: Horovod keeps the whole model and optimizer on every "
                "rank; set distributed.zero_stage=0 (or remove it), or use backend: deepspeed",
            )
        if self.reduction == "adasum":
            raise RuleViolation(
                "reduction",
                "Adasum needs Horovod's MPI controller, and the orchestrator runs Horovod over Gloo, which has no Adasum "
                "(Horovod: 'No Adasum operation enabled'): use reduction: average",
            )
        for key in ("offload_optimizer", "offload_params"):
            if getattr(self, key):
                raise RuleViolation(key, f"{key} exists only on DeepSpeed (ZeRO offload): remove it, or use backend: deepspeed")
        return self


def _backend_of(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("backend", DEFAULT_BACKEND)
    return getattr(value, "backend", DEFAULT_BACKEND)


DistributedSpec = Annotated[
    Union[Annotated[DeepSpeedSpec, Tag("deepspeed")], Annotated[HorovodSpec, Tag("horovod")]],
    Discriminator(_backend_of),
]
