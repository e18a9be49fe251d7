"""The `data` section: where text comes from, how it is tokenized, and how it is cut into sequences."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from orchestrator.data import MAX_WORKERS
from orchestrator.model.spec import MAX_TOKENS
from orchestrator.spec import RuleViolation, Spec

BUILTIN_CORPORA = ("python-stdlib",)


class TokenizerSpec(Spec):
    """`kind: bpe` trains a byte-level BPE on the training text; `byte` needs no training; `path` loads one."""

    kind: Literal["bpe", "byte", "pretrained"] = "bpe"
    vocab_size: int = Field(4096, ge=260, le=MAX_TOKENS)
    path: Optional[Path] = None
    sample_bytes: int = Field(256 * 2**20, ge=2**10, description="text a BPE tokenizer is trained on, drawn evenly across the training data")

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


Format = Literal["auto", "jsonl", "parquet", "text"]
MAX_SOURCES = 32
"""A mixture's sources; the blocks that assign positions to sources (data.stream) hold 1,024."""


class SourceSpec(Spec):
    """One source of a mixture: exactly one of `builtin` or `path`, and its share of the samples."""

    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="in the plan and the metrics; default: the corpus or file name")
    builtin: Optional[Literal[BUILTIN_CORPORA]] = None  # type: ignore[valid-type]
    path: Optional[Path] = None
    weight: float = Field(1.0, gt=0, description="relative: 3 and 1 give three samples of this source for every one of the other")
    format: Format = "auto"
    text_field: str = "text"
    max_bytes: Optional[int] = Field(None, gt=0, description="cap on the text read, for quick runs")

    @model_validator(mode="after")
    def _one_origin(self) -> "SourceSpec":
        if (self.builtin is None) == (self.path is None):
            raise RuleViolation("path", "set exactly one of `builtin` (" + ", ".join(BUILTIN_CORPORA) + ") or `path`")
        return self

    @property
    def label(self) -> str:
        """The name, else the corpus or file name made one: it names the source's shard directory and
        metrics, where a stem of dots (`...jsonl`) would name a parent directory and a newline, a space
        or a leading dash would garble a line or an argument."""
        return self.name or self.builtin or re.sub(r"[^\w.-]", "_", self.path.stem).lstrip("_.-") or "data"


class QualitySpec(Spec):
    """Documents dropped before training (Gopher's rules, Rae et al. 2021, for what text is not)."""

    min_chars: int = Field(1, ge=0, description="shorter documents are dropped")
    max_duplicate_line_fraction: float = Field(0.5, gt=0, le=1, description="share of a document's non-blank lines that repeat an earlier line")
    max_char_run: int = Field(200, ge=2, description="longest run of one repeated character")


class NearDedupSpec(Spec):
    """MinHash LSH over word 5-grams: documents whose estimated Jaccard similarity with a kept one reaches `threshold` are dropped."""

    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    num_perm: int = Field(128, ge=16, le=1024)


class CurationSpec(Spec):
    """What preparation removes before tokenizing; each step is counted in the data manifest and `orch show`."""

    exact_dedup: bool = Field(True, description="drop documents whose normalised text was seen before")
    near_dedup: Optional[NearDedupSpec] = Field(None, description="opt in with `{threshold: 0.8}`: it doubles preparation time, and "
                                                "what counts as a near duplicate depends on the corpus")
    redact_pii: bool = Field(True, description="e-mail addresses, phone numbers, payment cards (Luhn), national ids, IP addresses become placeholders")
    quality: Optional[QualitySpec] = QualitySpec()


class DataSpec(Spec):
    """Exactly one of `builtin` (a corpus every Python install has), `path` (files or a directory) or
    `sources` (a weighted mixture of those)."""

    builtin: Optional[Literal[BUILTIN_CORPORA]] = None  # type: ignore[valid-type]
    path: Optional[Path] = None
    format: Format = "auto"
    text_field: str = "text"
    max_bytes: Optional[int] = Field(None, gt=0, description="cap on the text read, for quick runs; with `sources`, "
                                     "the cap of each source that sets none of its own")
    sources: list[SourceSpec] = Field(default_factory=list, max_length=MAX_SOURCES)
    seq_len: int = Field(256, gt=1, le=MAX_TOKENS)
    val_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="processes that prepare the data (`orch prepare`); the result is the same for any number")
    shard_bytes: int = Field(64 * 2**20, ge=2**12, description="text per token shard: the unit a worker reads, curates and tokenizes at once")
    curation: CurationSpec = CurationSpec()
    decontaminate: list[Path] = Field(default_factory=list, description="evaluation files whose word n-grams are removed from training")
    tokenizer: TokenizerSpec = TokenizerSpec()
    canaries: CanarySpec = CanarySpec()
    instruction: Optional[InstructionSpec] = None

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        given = sum([self.builtin is not None, self.path is not None, bool(self.sources)])
        if given != 1:
            raise RuleViolation("path", "set exactly one of `data.builtin` (" + ", ".join(BUILTIN_CORPORA) + "), `data.path` or `data.sources`")
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise RuleViolation("sources", f"two sources are named {next(l for l in labels if labels.count(l) > 1)!r}: give each a `name`")
        if self.instruction is not None and (self.tokenizer.kind != "pretrained" or self.sources):
            raise RuleViolation("tokenizer.kind", "instruction data is one source tokenized with the base model's tokenizer: set "
                                "`data.path` and `data.tokenizer: {kind: pretrained, path: <the model directory>}`")
        return self

    def mixture(self) -> list[SourceSpec]:
        """The sources, the one-source form included. `data.max_bytes` caps each source without a cap
        of its own: a mixture on a base recipe that caps its one source (tiny-pretrain's 4 MB) reads
        as much of each source, not every byte of them."""
        if self.sources:
            return [s if s.max_bytes is not None else s.model_copy(update={"max_bytes": self.max_bytes}) for s in self.sources]
        return [SourceSpec(builtin=self.builtin, path=self.path, format=self.format, text_field=self.text_field, max_bytes=self.max_bytes)]
