"""A prepared data directory as its readers see it: its manifest as a typed record (text or
instruction data, told apart by `kind`), and `PreparedData`, the token arrays it names.

Preparation (curation, tokenizer training, tokenizing) lives in `orchestrator.data.prepare` and
writes the manifest from these records; a rank, the gates and the benchmarks read it through here
without importing any of that. The run directory's `data.json` holds the same manifest beside the
directory (`orchestrator.rundir.records.DataRecord`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, model_validator

if TYPE_CHECKING:
    import numpy as np

    from orchestrator.shared.data.shards import TokenShards

MANIFEST = "manifest.json"


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceManifest(_Closed):
    """One source of text data: its weight, counts, curation and shards per split (paths relative to the directory)."""

    name: str
    weight: float
    documents: dict[str, int]
    train_tokens: int
    val_tokens: int
    curation: dict[str, int]
    shards: dict[str, list[str]]


class TextManifest(_Closed):
    """Text data, sharded per source. Written without a `kind` (as before there was instruction
    data); a field added since the first manifests has a default, so that an older run's
    `data.json` reads, and only the fields a file holds are written back."""

    kind: ClassVar[str] = "text"
    format: int = 0
    """Preparation's `FORMAT` when it wrote this; 0: before the manifest held it."""
    documents: dict[str, int] = {}
    train_tokens: int
    val_tokens: int
    vocab_size: int
    token_dtype: str
    curation: dict = {}
    """What curation counted over all sources (deduplication, filtering, redaction), as it recorded it."""
    sources: list[SourceManifest] = []
    canaries: list[str] = []
    """Random strings inserted into the training data, for the memorisation gate."""
    seconds: dict[str, int | float] = {}
    """How long each phase took with how many workers: not part of what was prepared."""

    @model_validator(mode="before")
    @classmethod
    def _dtype_by_vocabulary(cls, data):
        """Preparation's own rule, for a record that does not name its dtype."""
        if isinstance(data, dict) and "token_dtype" not in data and "vocab_size" in data:
            return {**data, "token_dtype": "uint16" if data["vocab_size"] <= 2**16 else "uint32"}
        return data


class InstructionSplit(_Closed):
    examples: int
    rows: int
    tokens: int
    response_tokens: int


class InstructionManifest(_Closed):
    """Instruction data: one split's examples packed into rows (`<split>.<array>.npy`) and, for
    evaluation, each example's tokens in one shard per split."""

    kind: Literal["instruction"]
    documents: dict[str, int]
    instruction: dict[str, InstructionSplit]
    truncated_examples: int
    train_tokens: int
    val_tokens: int
    vocab_size: int
    token_dtype: str
    seq_len: int
    packing: bool
    canaries: list[str] = []

    sources: ClassVar[list[SourceManifest]] = []


def _kind(value) -> str:
    return value.get("kind", "text") if isinstance(value, dict) else value.kind


Manifest = Annotated[Union[Annotated[TextManifest, Tag("text")], Annotated[InstructionManifest, Tag("instruction")]],
                     Discriminator(_kind)]


class _Holder(_Closed):
    manifest: Manifest


def parse_manifest(content: dict) -> TextManifest | InstructionManifest:
    """A manifest's content (from `manifest.json`, or `data.json` less its `dir`) as its record."""
    return _Holder(manifest=content).manifest


def read_manifest(directory: Path) -> TextManifest | InstructionManifest:
    return parse_manifest(json.loads((directory / MANIFEST).read_text()))


def write_manifest(directory: Path, manifest: TextManifest | InstructionManifest) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest_content(manifest), indent=1))


def manifest_content(manifest: TextManifest | InstructionManifest) -> dict:
    """The manifest as JSON holds it: the fields it was given, in the order they are declared."""
    return manifest.model_dump(mode="json", exclude_unset=True)


@dataclass(frozen=True)
class PreparedData:
    """A prepared directory and its manifest: what the training loop, evaluation and the gates read."""

    dir: Path
    manifest: TextManifest | InstructionManifest

    @classmethod
    def load(cls, directory: Path) -> "PreparedData":
        return cls(directory, read_manifest(directory))

    @property
    def tokenizer_dir(self) -> Path:
        return self.dir / "tokenizer"

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def train_tokens(self) -> int:
        return self.manifest.train_tokens

    @property
    def val_tokens(self) -> int:
        return self.manifest.val_tokens

    @property
    def sources(self) -> list[SourceManifest]:
        """Per source: name, weight, and its shards per split (none for instruction data)."""
        return self.manifest.sources

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def source_tokens(self, split: str) -> list[TokenShards]:
        """Each source's split as one flat token array (`TokenShards`), in the recipe's order."""
        from orchestrator.shared.data.shards import TokenShards

        return [TokenShards([self.dir / name for name in s.shards[split]], self.manifest.token_dtype) for s in self.sources]

    def tokens(self, split: str) -> TokenShards:
        """The whole split, every source's shards in turn (instruction data: one shard of its examples)."""
        from orchestrator.shared.data.shards import TokenShards

        if self.kind == "instruction":
            return TokenShards([self.dir / split], self.manifest.token_dtype)
        return TokenShards([self.dir / name for s in self.sources for name in s.shards[split]], self.manifest.token_dtype)

    def instruction_rows(self, split: str) -> dict[str, np.ndarray]:
        """Packed instruction rows (input_ids, labels, segments), memory-mapped."""
        import numpy as np

        return {name: np.load(self.dir / f"{split}.{name}.npy", mmap_mode="r") for name in ("input_ids", "labels", "segments")}
