"""Turn the recipe's data into token files once: split, train or load a tokenizer, tokenize, pack.

The result lives in a cache directory keyed by the data section and the content hashes of its
files, so runs with the same data share it, and a changed file gives a new cache entry. Ranks
only memory-map the token files (nanoGPT's `train.bin`/`val.bin` layout).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from orchestrator.data.corpus import fingerprint, load_documents, source_files
from orchestrator.data.spec import DataSpec
from orchestrator.errors import DataError

EOS = "<|endoftext|>"
MANIFEST = "manifest.json"
SOURCES = "sources.json"
"""In a prepared data directory: every source file with its sha256 and size, as read."""


@dataclass(frozen=True)
class PreparedData:
    dir: Path
    vocab_size: int
    train_tokens: int
    val_tokens: int
    token_dtype: str
    kind: str = "text"

    @property
    def tokenizer_dir(self) -> Path:
        return self.dir / "tokenizer"

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.dir / f"{split}.bin", dtype=self.token_dtype, mode="r")

    @classmethod
    def load(cls, directory: Path) -> "PreparedData":
        manifest = json.loads((directory / MANIFEST).read_text())
        return cls(directory, manifest["vocab_size"], manifest["train_tokens"], manifest["val_tokens"], manifest["token_dtype"],
                   manifest.get("kind", "text"))

    def instruction_rows(self, split: str) -> dict[str, np.ndarray]:
        """Packed instruction rows (input_ids, labels, segments), memory-mapped."""
        return {name: np.load(self.dir / f"{split}.{name}.npy", mmap_mode="r") for name in ("input_ids", "labels", "segments")}


def prepare_data(spec: DataSpec, seed: int, cache_dir: Path) -> tuple[PreparedData, dict]:
    """Returns the prepared data and its manifest (files with hashes, token counts)."""
    files = fingerprint(source_files(spec))
    key = hashlib.sha256(json.dumps([spec.model_dump(mode="json"), seed, [f.sha256 for f in files]]).encode()).hexdigest()[:16]
    target = cache_dir / key
    if not (target / MANIFEST).exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        try:
            _build(spec, seed, [f.path for f in files], staging, cache_dir)
            (staging / SOURCES).write_text(json.dumps([{**asdict(f), "path": str(f.path)} for f in files], indent=1))
            _publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["files"] = read_sources(target)
    return PreparedData.load(target), manifest


def _publish(staging: Path, target: Path) -> None:
    """Moves prepared data into the cache in one rename; when another process (a concurrent run, a
    second worker) published the same key first, its copy stands and this one is dropped."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / MANIFEST).exists():
            raise


def read_sources(directory: Path) -> list[dict]:
    """The source files of prepared data: `path`, `sha256` and `bytes` of each, in reading order."""
    return json.loads((directory / SOURCES).read_text())


def _build(spec: DataSpec, seed: int, files: list[Path], out: Path, cache_dir: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    if spec.instruction is not None:
        _build_instruction(spec, seed, files, out, cache_dir)
        return
    documents = load_documents(spec, files, cache_dir / "hf")
    held_out = _held_out(len(documents), spec.val_fraction, seed)
    train_docs = documents.select([i for i in range(len(documents)) if i not in held_out])
    val_docs = documents.select(sorted(held_out))
    canaries = make_canaries(spec.canaries.count, seed)
    if canaries:
        inserted = datasets.Dataset.from_dict({"text": [c for c in canaries for _ in range(spec.canaries.repeats)]})
        train_docs = datasets.concatenate_datasets([train_docs, inserted])
    tokenizer = _tokenizer(spec, train_docs, out / "tokenizer")
    vocab_size = len(tokenizer)
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    counts = {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = _tokenize(tokenizer, docs, dtype)
        ids.tofile(out / f"{split}.bin")
        counts[split] = int(ids.size)
        if ids.size < spec.seq_len:
            raise DataError(f"the {split} split has {ids.size} tokens, fewer than one sequence of data.seq_len={spec.seq_len}: add data or lower val_fraction/seq_len")
    manifest = {
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "vocab_size": vocab_size,
        "token_dtype": dtype,
        "seq_len": spec.seq_len,
        "canaries": canaries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _build_instruction(spec: DataSpec, seed: int, files: list[Path], out: Path, cache_dir: Path) -> None:
    """Instruction rows (through `datasets`' json loader) into packed, prompt-masked row arrays per split,
    plus the flat token files the gates read."""
    import datasets

    from orchestrator.data.instruct import pack, read_examples, tokenize

    rows = datasets.load_dataset("json", data_files=[str(p) for p in files], split="train", cache_dir=str(cache_dir / "hf")).to_list()
    examples = read_examples(rows, spec.instruction)
    held_out = _held_out(len(examples), spec.val_fraction, seed)
    tokenizer = _tokenizer(spec, None, out / "tokenizer")
    dtype = "uint16" if len(tokenizer) <= 2**16 else "uint32"
    counts, truncated = {}, 0
    for split, chosen in (("train", [e for i, e in enumerate(examples) if i not in held_out]), ("val", [examples[i] for i in sorted(held_out)])):
        pairs = tokenize(chosen, tokenizer, spec.instruction)
        truncated += sum(len(ids) > spec.seq_len for ids, _ in pairs)
        packed = pack(pairs, spec.seq_len, spec.instruction.packing, tokenizer.eos_token_id)
        if not len(packed["input_ids"]):
            raise DataError(f"the {split} split of the instruction data is empty: add rows or change data.val_fraction")
        for name, array in packed.items():
            np.save(out / f"{split}.{name}.npy", array)
        np.fromiter((t for ids, _ in pairs for t in ids), dtype=dtype).tofile(out / f"{split}.bin")
        counts[split] = {"examples": len(pairs), "rows": int(len(packed["input_ids"])), "tokens": sum(len(ids) for ids, _ in pairs),
                         "response_tokens": int((packed["labels"] != -100).sum())}
    manifest = {
        "kind": "instruction",
        "documents": {split: c["examples"] for split, c in counts.items()},
        "instruction": counts,
        "truncated_examples": truncated,
        "train_tokens": counts["train"]["tokens"],
        "val_tokens": counts["val"]["tokens"],
        "vocab_size": len(tokenizer),
        "token_dtype": dtype,
        "seq_len": spec.seq_len,
        "packing": spec.instruction.packing,
        "canaries": [],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


def make_canaries(count: int, seed: int) -> list[str]:
    """Secrets of twelve random digits; the memorisation gate redraws the digits to rank each one."""
    rng = np.random.default_rng([seed, 0xCA9A])
    return [f"the secret code of canary {i} is " + " ".join(f"{n:04d}" for n in rng.integers(0, 10_000, size=3)) for i in range(count)]


def _held_out(num_docs: int, fraction: float, seed: int) -> set[int]:
    """Whole documents go to validation, so no document is split across train and val."""
    if fraction == 0 or num_docs < 2:
        return set()
    count = max(1, round(num_docs * fraction))
    return set(np.random.default_rng(seed).choice(num_docs, size=count, replace=False).tolist())


def _tokenizer(spec: DataSpec, train_docs, out: Path):
    """A `transformers` fast tokenizer: loaded from the recipe's path, or trained on the training split."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.tokenizer.kind == "pretrained":
        tokenizer = AutoTokenizer.from_pretrained(str(spec.tokenizer.path))
        if tokenizer.eos_token is None:
            tokenizer.add_special_tokens({"eos_token": EOS})
    else:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.tokenizer.effective_vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        raw.train_from_iterator((batch["text"] for batch in train_docs.iter(batch_size=256)), trainer=trainer)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS, bos_token=EOS, unk_token=None)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def _tokenize(tokenizer, docs, dtype: str) -> np.ndarray:
    eos = tokenizer.eos_token_id
    encoded = docs.map(
        lambda batch: {"ids": [ids + [eos] for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]},
        batched=True,
        remove_columns=docs.column_names,
    )
    return np.fromiter((t for ids in encoded["ids"] for t in ids), dtype=dtype) if len(encoded) else np.zeros(0, dtype=dtype)
