"""The `distributed` section: which backend, how many nodes and processes, and its own options."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, model_validator

from orchestrator.spec import RuleViolation, Spec


class DeepSpeedSpec(Spec):
    """ZeRO stage 0 is plain data parallelism; 1 shards optimizer states, 2 also gradients, 3 also parameters."""

    backend: Literal["deepspeed"] = "deepspeed"
    nodes: int = Field(1, gt=0)
    procs_per_node: Union[int, Literal["auto"]] = "auto"
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: bool = False
    offload_params: bool = False

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> "DeepSpeedSpec":
        if self.offload_optimizer and self.zero_stage == 0:
            raise RuleViolation("offload_optimizer", "offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise RuleViolation("offload_params", "offload_params needs zero_stage 3 (only ZeRO-3 partitions parameters)")
        if isinstance(self.procs_per_node, int) and self.procs_per_node < 1:
            raise RuleViolation("procs_per_node", "procs_per_node must be at least 1, or `auto` (one per GPU, else 1)")
        return self
