"""`horovod_config.json`, the Horovod backend's file in the plan (`PlanRecord.backend_files`), as a
frozen record: what each rank's optimizer and `hvd.DistributedOptimizer` are built from.

The planner renders it from the recipe (`orchestrator.backends.horovod`); the Horovod engine reads
it back from the plan with `HorovodConfig.of(plan)`, so a renamed field fails in a unit test, not
as a KeyError on a rank. (DeepSpeed's file is DeepSpeed's own format, handed to it whole.)
"""

from __future__ import annotations

from typing import Literal, Optional

from orchestrator.rundir.records import PlanRecord, Record


class AdamWConfig(Record):
    type: Literal["AdamW"] = "AdamW"
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float


class HorovodConfig(Record):
    backward_passes_per_step: int
    """Gradient accumulation: micro-batches per optimizer step."""
    compression: Literal["none", "fp16"]
    optimizer: AdamWConfig
    gradient_clipping: Optional[float]
    precision: Literal["fp32", "bf16", "fp16"]

    @classmethod
    def of(cls, plan: PlanRecord) -> "HorovodConfig":
        return cls.model_validate(plan.backend_config)
