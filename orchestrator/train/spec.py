"""The `train` section: steps, batch, optimizer, schedule and numerics."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from orchestrator.spec import RuleViolation, Seed, Spec

Precision = Literal["fp32", "bf16", "fp16"]

# Physical bounds, far past any real run, so a slipped digit is caught at `validate`, not days into a
# job: 10^12 steps is 30 years at a step per millisecond; no device holds 2^20 sequences of one micro
# batch, and no cluster takes 2^30 sequences in one optimizer step.
MAX_STEPS = 10**12
MAX_BATCH = 2**20
MAX_GLOBAL_BATCH = 2**30


class OptimizerSpec(Spec):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = Field(0.1, ge=0)


class ScheduleSpec(Spec):
    """Linear warmup to `optimizer.lr`, then `decay` down to `min_lr_ratio` x lr at the last step."""

    warmup_steps: int = Field(0, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)


class TrainSpec(Spec):
    """Give `global_batch_size` or `gradient_accumulation_steps`; the other follows from the world size."""

    steps: int = Field(100, gt=0, lt=MAX_STEPS)
    micro_batch_size: int = Field(8, gt=0, le=MAX_BATCH)
    global_batch_size: Optional[int] = Field(None, gt=0, le=MAX_GLOBAL_BATCH)
    gradient_accumulation_steps: Optional[int] = Field(None, gt=0, le=MAX_BATCH)
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    precision: Precision = "fp32"
    grad_clip: Optional[float] = Field(1.0, gt=0)
    seed: Seed = 1234
    eval_interval: int = Field(50, gt=0)
    eval_batches: int = Field(4, gt=0)
    log_interval: int = Field(1, gt=0)
    activation_checkpointing: bool = False
    """Keep only each layer's input during the forward pass and recompute the rest in the backward
    (transformers' gradient checkpointing): about a third more compute for activations that no longer
    grow with the layer's width. The same losses: it recomputes, it does not change the maths."""
    replica_check_interval: Optional[int] = Field(None, gt=0)
    """Every N steps, compare a digest of every rank's full parameters; replicas that drifted apart
    (a non-deterministic reduction, a bad node) stop the run. Off by default: it gathers the model."""

    @model_validator(mode="after")
    def _batch_given_once(self) -> "TrainSpec":
        if self.global_batch_size is not None and self.gradient_accumulation_steps is not None:
            raise RuleViolation("gradient_accumulation_steps", "give `global_batch_size` or `gradient_accumulation_steps`, not both: each determines the other")
        if self.schedule.warmup_steps >= self.steps:
            raise RuleViolation("schedule.warmup_steps", f"schedule.warmup_steps ({self.schedule.warmup_steps}) must be below steps ({self.steps}): lower the warmup or raise the steps")
        return self
