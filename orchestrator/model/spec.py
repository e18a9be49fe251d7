"""The `model` section: an architecture built from sizes with random init, or a local model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from orchestrator.shared.model.architectures import ARCHITECTURES, Sizes
from orchestrator.spec import RuleViolation, Spec

ArchName = Literal[tuple(ARCHITECTURES)]  # type: ignore[valid-type]

# Physical bounds, each far past the largest model trained so far (widths near 2^14, a few hundred
# layers, vocabularies near 2^18, contexts near 2^23), so a slipped digit fails at `validate` instead
# of planning a model larger than every machine's memory together. MAX_TOKENS bounds vocabulary ids
# and positions (sequence lengths) alike.
MAX_WIDTH = 2**20
MAX_LAYERS = 10**4
MAX_TOKENS = 2**24


class LoraSpec(Spec):
    """Parameter-efficient fine-tuning through `peft`: only the adapters train; the base stays frozen.
    The adapter is saved on its own at release, beside the merged model."""

    rank: int = Field(8, ge=1, le=MAX_WIDTH)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class ModelSpec(Spec):
    """Sizes are the Llama names; each architecture maps them onto its own config keys."""

    arch: Optional[ArchName] = None
    path: Optional[Path] = None
    hidden_size: int = Field(256, gt=0, le=MAX_WIDTH)
    num_layers: int = Field(4, gt=0, le=MAX_LAYERS)
    num_heads: int = Field(4, gt=0, le=MAX_WIDTH)
    num_kv_heads: Optional[int] = Field(None, gt=0, le=MAX_WIDTH)
    intermediate_size: Optional[int] = Field(None, gt=0, le=4 * MAX_WIDTH)
    max_position_embeddings: int = Field(1024, gt=0, le=MAX_TOKENS)
    vocab_size: Optional[int] = Field(None, gt=0, le=MAX_TOKENS)
    tie_embeddings: bool = True
    lora: Optional[LoraSpec] = None

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.arch is None and self.path is None:
            raise RuleViolation("arch", "set `model.arch` (one of " + ", ".join(ARCHITECTURES) + ") or `model.path` (a local model directory)")
        if self.hidden_size % self.num_heads:
            raise RuleViolation("num_heads", f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.num_heads % self.kv_heads:
            raise RuleViolation("num_kv_heads", f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.kv_heads}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def sizes(self, vocab_size: int) -> Sizes:
        """The concrete sizes, with the vocabulary taken from the tokenizer unless the recipe pins it."""
        return Sizes(
            vocab_size=self.vocab_size or vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.kv_heads,
            intermediate_size=self.intermediate_size or 4 * self.hidden_size,
            max_position_embeddings=self.max_position_embeddings,
            tie_embeddings=self.tie_embeddings,
        )
