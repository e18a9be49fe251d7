"""The whole recipe: composes the sections each component owns."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from orchestrator.checkpoint.spec import CheckpointSpec
from orchestrator.data.spec import DataSpec
from orchestrator.backends.spec import DeepSpeedSpec, DistributedSpec
from orchestrator.energy.spec import EnergySpec
from orchestrator.release.card_spec import CardSpec
from orchestrator.gates.spec import GatesSpec
from orchestrator.model.spec import ModelSpec
from orchestrator.recovery.spec import FaultToleranceSpec
from orchestrator.slurm.spec import SlurmSpec
from orchestrator.spec import RuleViolation, Spec
from orchestrator.sweep.spec import SweepSpec
from orchestrator.tracking.spec import TrackingSpec
from orchestrator.train.spec import TrainSpec


class Recipe(Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: Optional[str] = None
    task: Literal["pretrain", "finetune"] = "pretrain"
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = TrainSpec()
    distributed: DistributedSpec = DeepSpeedSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    fault_tolerance: FaultToleranceSpec = FaultToleranceSpec()
    tracking: TrackingSpec = TrackingSpec()
    energy: EnergySpec = EnergySpec()
    gates: GatesSpec = GatesSpec()
    card: CardSpec = CardSpec()
    slurm: SlurmSpec = SlurmSpec()
    sweep: Optional[SweepSpec] = Field(None, description="what `orch sweep` searches; `orch run` trains the recipe as written")

    @model_validator(mode="after")
    def _cross_section(self) -> "Recipe":
        if self.data.seq_len > self.model.max_position_embeddings:
            raise RuleViolation(
                "data.seq_len",
                f"data.seq_len ({self.data.seq_len}) is longer than model.max_position_embeddings "
                f"({self.model.max_position_embeddings}): shorten the sequences or raise the model's positions"
            )
        tokenizer = self.data.tokenizer
        if self.model.vocab_size and tokenizer.kind != "pretrained" and self.model.vocab_size < tokenizer.effective_vocab_size:
            raise RuleViolation(
                "model.vocab_size",
                f"model.vocab_size ({self.model.vocab_size}) is smaller than the tokenizer's {tokenizer.effective_vocab_size} ids: "
                "raise it or leave it unset to follow the tokenizer",
            )
        if self.task == "finetune" and self.model.path is None:
            raise RuleViolation("model.path", "task `finetune` starts from weights: set `model.path` to a local model directory")
        return self
