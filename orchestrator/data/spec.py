"""The `data` section: where text comes from, how it is tokenized, and how it is cut into sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from orchestrator.model.spec import MAX_TOKENS
from orchestrator.spec import RuleViolation, Spec

BUILTIN_CORPORA = ("python-stdlib",)


class TokenizerSpec(Spec):
    """`kind: bpe` trains a byte-level BPE on the training text; `byte` needs no training; `path` loads one."""

    kind: Literal["bpe", "byte", "pretrained"] = "bpe"
    vocab_size: int = Field(4096, ge=260, le=MAX_TOKENS)
    path: Optional[Path] = None

    @model_validator(mode="after")
    def _path_iff_pretrained(self) -> "TokenizerSpec":
        if (self.kind == "pretrained") != (self.path is not None):
            raise RuleViolation("path", "`kind: pretrained` needs `path` (a local tokenizer directory), and only it takes one")
        return self

    @property
    def effective_vocab_size(self) -> int:
        """Byte tokenizers have 256 byte ids plus the end-of-text id."""
        return 257 if self.kind == "byte" else self.vocab_size


class CanarySpec(Spec):
    """Random secrets inserted into the training split, each `repeats` times, so the memorisation
    gate can measure how much the model memorises (Carlini et al., "The Secret Sharer")."""

    count: int = Field(0, ge=0)
    repeats: int = Field(1, ge=1)


DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class InstructionSpec(Spec):
    """Instruction data: rows with a prompt and a response, or chat `messages` (the last assistant
    turn is the response). Formatted with the tokenizer's chat template when it has one, else with
    `template`; the loss counts response tokens only."""

    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    template: str = Field(DEFAULT_TEMPLATE, description="with {prompt}; used when the tokenizer has no chat template")
    packing: bool = Field(True, description="several examples per sequence, attention never crossing them")

    @model_validator(mode="after")
    def _template_has_prompt(self) -> "InstructionSpec":
        if "{prompt}" not in self.template:
            raise RuleViolation("template", "the template must contain {prompt}, where the prompt goes")
        return self


class DataSpec(Spec):
    """Exactly one of `builtin` (a corpus every Python install has) or `path` (files or a directory)."""

    builtin: Optional[Literal[BUILTIN_CORPORA]] = None  # type: ignore[valid-type]
    path: Optional[Path] = None
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    text_field: str = "text"
    max_bytes: Optional[int] = Field(None, gt=0, description="cap on the text read, for quick runs")
    seq_len: int = Field(256, gt=1, le=MAX_TOKENS)
    val_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    tokenizer: TokenizerSpec = TokenizerSpec()
    canaries: CanarySpec = CanarySpec()
    instruction: Optional[InstructionSpec] = None

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.builtin is None) == (self.path is None):
            raise RuleViolation("path", "set exactly one of `data.builtin` (" + ", ".join(BUILTIN_CORPORA) + ") or `data.path`")
        if self.instruction is not None and self.tokenizer.kind != "pretrained":
            raise RuleViolation("tokenizer.kind", "instruction data is tokenized with the base model's tokenizer: set "
                                "`data.tokenizer: {kind: pretrained, path: <the model directory>}`")
        return self
