"""Turn the recipe's data into token shards once: read, curate, train or load a tokenizer, tokenize.

Each source is streamed in reading order and cut into chunks; workers curate each chunk
(`data.curate`), one process decides deduplication in order, a BPE tokenizer is trained on an even
sample of what was kept (`data.tokenizer.sample_bytes`), and workers tokenize each chunk into its
own training and validation shard (`data.shards`). Memory holds a few chunks and the deduplication
index, never the corpus; a long document is tokenized, sampled and fingerprinted a piece at a time
(`data.pieces`), with the tokens it has whole. The result lives in a cache directory keyed by the
data section and the content hashes of its files, so runs with the same data share it, and a changed
file gives a new entry (built in a staging directory and published with one rename: `data.staging`); its
`manifest.json` counts every document read, dropped, redacted and kept, per source.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from pydantic import TypeAdapter

from orchestrator.data.corpus import SourceFile, datasets_file, file_stats, fingerprint, iter_documents, source_files
from orchestrator.data.curate import Deduplicator, contamination_from
from orchestrator.data.pieces import PIECE_CHARS, pieces
from orchestrator.shared.data.prepared import (MANIFEST, InstructionManifest, InstructionSplit, PreparedData, SourceManifest, TextManifest,
                                               read_manifest, write_manifest)
from orchestrator.shared.data.shards import write_shard
from orchestrator.data.spec import DataSpec, SourceSpec
from orchestrator.data.staging import publish, staged
from orchestrator.data.workers import CurateTask, TokenizeTask, Workers, chunks, curate_chunk, read_texts, tokenize_chunk
from orchestrator.errors import DataError

EOS = "<|endoftext|>"
SOURCES = "sources.json"
"""In a prepared data directory: every source file with its sha256 and size, as read."""
FORMAT = 4
"""Of what preparation writes (sharded, per source; the validation split by documents and text; long
documents tokenized in pieces):
part of the cache key, raised whenever the same recipe and files would be prepared otherwise."""


def cache_key(spec: DataSpec, seed: int, files: list[list[SourceFile]]) -> str:
    """What the prepared data depends on: the files' content, not the number of workers, nor (for
    text) the sequence length, which only cuts the same tokens into other windows."""
    section = _section(spec)
    return hashlib.sha256(json.dumps([FORMAT, section, seed, [[f.sha256 for f in fs] for fs in files]]).encode()).hexdigest()[:16]


def find_prepared(spec: DataSpec, seed: int, cache_dir: Path) -> Path | None:
    """The prepared directory for these files as they stand (path, size, modification time), without
    reading them: hashing a large corpus takes minutes, so a hit here skips it."""
    pointer = cache_dir / "index" / f"{_stat_key(spec, seed)}.json"
    try:
        target = cache_dir / json.loads(pointer.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return target if (target / MANIFEST).exists() else None


def prepared_manifest(spec: DataSpec, seed: int, cache_dir: Path) -> TextManifest | InstructionManifest | None:
    """The manifest of this data if it is prepared and its files have not changed since, else None."""
    try:
        target = find_prepared(spec, seed, cache_dir)
    except OSError:  # a source file gone since validation
        return None
    return read_manifest(target) if target else None


def _section(spec: DataSpec) -> dict:
    return spec.model_dump(mode="json", exclude={"workers"} | ({"seq_len"} if spec.instruction is None else set()))


def _stat_key(spec: DataSpec, seed: int) -> str:
    section = _section(spec)
    stats = [file_stats(s) for s in spec.mixture()]
    return hashlib.sha256(json.dumps([FORMAT, section, seed, stats]).encode()).hexdigest()[:24]


def prepare_data(spec: DataSpec, seed: int, cache_dir: Path, workers: int | None = None,
                 piece_chars: int = PIECE_CHARS) -> PreparedData:
    """Returns the prepared data (its manifest counts; `read_sources` lists its files with their
    hashes); prepares it when the cache lacks it, with `workers` processes (default: `data.workers`). `piece_chars`, the longest
    piece of a document any step takes at once, is not part of the cache key: it changes memory and
    speed, tokens only where `data.pieces` says. Tests lower it."""
    target = find_prepared(spec, seed, cache_dir)
    if target is None:
        files = [fingerprint(source_files(source)) for source in spec.mixture()]
        target = cache_dir / cache_key(spec, seed, files)
    if not (target / MANIFEST).exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with staged(cache_dir, target.name) as staging:
            _build(spec, seed, files, staging, cache_dir, workers or spec.workers, piece_chars)
            publish(staging, target, MANIFEST)
    (cache_dir / "index").mkdir(exist_ok=True)
    pointer = cache_dir / "index" / f"{_stat_key(spec, seed)}.json"
    if not pointer.exists():
        pointer.write_text(json.dumps({"key": target.name}))
    data = PreparedData.load(target)
    short = [(split, n) for split, n in (("train", data.train_tokens), ("val", data.val_tokens)) if n < spec.seq_len]
    if short and spec.instruction is None:
        split, n = short[0]
        raise DataError(f"the {split} split has {n} tokens, fewer than one sequence of data.seq_len={spec.seq_len}: add data or lower val_fraction/seq_len")
    return data


_SOURCE_LIST = TypeAdapter(list[SourceFile])


def read_sources(directory: Path) -> list[SourceFile]:
    """The source files of prepared data (each one's path, sha256 and bytes), in reading order."""
    return parse_sources(json.loads((directory / SOURCES).read_text()))


def parse_sources(entries: list[dict]) -> list[SourceFile]:
    """The source files as `SOURCES` lists them (and provenance.json repeats them), typed."""
    return _SOURCE_LIST.validate_python(entries)


def sources_content(files: list[SourceFile]) -> list[dict]:
    """The source files as `SOURCES` lists them: path, sha256 and bytes, in that order."""
    return _SOURCE_LIST.dump_python(files, mode="json")


def _build(spec: DataSpec, seed: int, files: list[list[SourceFile]], out: Path, cache_dir: Path, workers: int, piece_chars: int) -> None:
    import datasets

    datasets.disable_progress_bars()
    (out / SOURCES).write_text(json.dumps(sources_content([f for fs in files for f in fs]), indent=1))
    if spec.instruction is not None:
        _build_instruction(spec, seed, [f.path for f in files[0]], out, cache_dir)
        return
    scratch = out / "scratch"
    scratch.mkdir()
    contamination = contamination_from(spec.decontaminate)
    clock = [time.perf_counter()]
    with Workers(workers) as pool:
        curated = [_curate_source(s, source, [f.path for f in fs], spec, contamination, pool, scratch, cache_dir, piece_chars)
                   for s, (source, fs) in enumerate(zip(spec.mixture(), files))]
        for source in curated:
            source.split(spec.val_fraction, seed)
        clock.append(time.perf_counter())
        tokenizer = _tokenizer(spec, _sample(curated, spec.tokenizer.sample_bytes, piece_chars), out / "tokenizer")
        dtype = "uint16" if len(tokenizer) <= 2**16 else "uint32"
        canaries = make_canaries(spec.canaries.count, seed)
        clock.append(time.perf_counter())
        sources = [source.tokenize(pool, out, tokenizer.eos_token_id, dtype, piece_chars) for source in curated]
        clock.append(time.perf_counter())
    if canaries:
        first = sources[0]
        name = f"sources/{first.name}/train-canaries"
        repeated = [np.asarray(tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]) for c in canaries
                    for _ in range(spec.canaries.repeats)]
        sources[0] = first.model_copy(update={"train_tokens": first.train_tokens + write_shard(out / name, repeated, dtype),
                                              "shards": {**first.shards, "train": [*first.shards["train"], name]}})
    shutil.rmtree(scratch)
    write_manifest(out, TextManifest(
        format=FORMAT,
        documents={split: sum(s.documents[split] for s in sources) for split in ("train", "val")},
        train_tokens=sum(s.train_tokens for s in sources),
        val_tokens=sum(s.val_tokens for s in sources),
        vocab_size=len(tokenizer),
        token_dtype=dtype,
        curation=dict(sum((Counter(s.curation) for s in sources), Counter())),
        sources=sources,
        canaries=canaries,
        seconds={"workers": workers, **{phase: round(b - a, 3) for phase, a, b in zip(("curate", "tokenizer", "tokenize"), clock, clock[1:])}},
    ))


@dataclass
class CuratedSource:
    """One source after curation: its chunks in the scratch directory, which of their documents
    deduplication kept, and (after `split`) which go to validation."""

    index: int
    spec: SourceSpec
    chunks: list[Path]
    keep: list[np.ndarray]
    sizes: list[np.ndarray]
    counts: Counter

    def split(self, fraction: float, seed: int) -> None:
        """Whole kept documents to validation (code 2), the rest to training (1); 0 stays dropped.
        Documents are held out in a seeded order until they are `fraction` of the documents and of
        the text: a count alone may draw a few short files, too little text for one sequence."""
        sizes = np.concatenate([s[k > 0] for s, k in zip(self.sizes, self.keep)]) if self.keep else np.zeros(0, np.int64)
        held_out = np.zeros(len(sizes), dtype=bool)
        if fraction > 0 and len(sizes) >= 2:
            order = np.random.default_rng(seed + self.index).permutation(len(sizes))
            text = np.cumsum(sizes[order])
            enough = (np.arange(1, len(sizes) + 1) >= round(len(sizes) * fraction)) & (text >= fraction * text[-1])
            held_out[order[: min(int(np.argmax(enough)) + 1, len(sizes) - 1)]] = True
        ordinal = 0
        for keep in self.keep:
            where = np.flatnonzero(keep)
            keep[where] = np.where(held_out[ordinal : ordinal + len(where)], 2, 1)
            ordinal += len(where)

    def training_texts(self, budget: int, piece_chars: int) -> Iterator[str]:
        """At most `budget` characters of training documents, each chunk giving its share (the last
        document it gives cut to fit), so the sample spans the whole source. A long document comes
        in pieces: the trainer counts the words of each, the same words as of the whole document
        (see `pieces`), at a fraction of the memory."""
        total = sum(int(s[k == 1].sum()) for s, k in zip(self.sizes, self.keep)) or 1
        for chunk, keep, sizes in zip(self.chunks, self.keep, self.sizes):
            left = int(budget * int(sizes[keep == 1].sum()) / total)
            for text, code in zip(read_texts(chunk), keep.tolist()):
                if code == 1 and left > 0:
                    yield from pieces(text[:left], piece_chars)
                    left -= min(left, len(text))

    def tokenize(self, pool: Workers, out: Path, eos: int, dtype: str, piece_chars: int) -> SourceManifest:
        """The source's shards, one per chunk and split, and its entry in the manifest."""
        name = self.spec.label
        (out / "sources" / name).mkdir(parents=True)
        shards: dict[str, list[str]] = {"train": [], "val": []}
        tasks = []
        for i, (chunk, keep) in enumerate(zip(self.chunks, self.keep)):
            paths = {split: f"sources/{name}/{split}-{i:05d}" for split in shards}
            for split, path in paths.items():
                shards[split].append(path)
            tasks.append(TokenizeTask(chunk, keep, out / "tokenizer", eos, dtype, {split: out / path for split, path in paths.items()}, piece_chars))
        documents, tokens = Counter(), Counter()
        for counts in pool.map(tokenize_chunk, tasks):
            for split, (docs, n) in counts.items():
                documents[split] += docs
                tokens[split] += n
        return SourceManifest(name=name, weight=self.spec.weight, documents={s: documents[s] for s in shards}, train_tokens=tokens["train"],
                              val_tokens=tokens["val"], curation=dict(self.counts), shards=shards)


def _curate_source(index: int, source: SourceSpec, files: list[Path], spec: DataSpec, contamination, pool: Workers,
                   scratch: Path, cache_dir: Path, piece_chars: int) -> CuratedSource:
    dedup = Deduplicator(spec.curation)
    tasks = (CurateTask(texts, scratch / f"{index}-{i:05d}", spec.curation, contamination, piece_chars)
             for i, texts in enumerate(chunks(iter_documents(source, files, cache_dir / "hf"), spec.shard_bytes)))
    paths, keep, sizes, counts = [], [], [], Counter()
    for i, result in enumerate(pool.map(curate_chunk, tasks)):
        mask, duplicates = dedup.keep(result.keys, result.signatures)
        paths.append(scratch / f"{index}-{i:05d}")
        keep.append(mask.astype(np.int8))
        sizes.append(np.asarray(result.sizes, dtype=np.int64))
        counts.update(result.counts)
        counts.update(duplicates)
    counts["kept"] = int(sum(k.sum() for k in keep))
    if counts["read"] == 0:
        raise DataError(f"data source {source.label!r} has no documents ({len(files)} files)")
    return CuratedSource(index, source, paths, keep, sizes, counts)


def _sample(sources: list[CuratedSource], budget: int, piece_chars: int) -> Iterator[str]:
    """The tokenizer's training text: each source's share of `budget` by its weight."""
    total = sum(s.spec.weight for s in sources)
    for source in sources:
        yield from source.training_texts(int(budget * source.spec.weight / total), piece_chars)


def _build_instruction(spec: DataSpec, seed: int, files: list[Path], out: Path, cache_dir: Path) -> None:
    """Instruction rows (through `datasets`' json loader) into packed, prompt-masked row arrays per split,
    plus the flat token files the gates read."""
    import datasets

    from orchestrator.data.instruct import pack, read_examples, tokenize

    rows = datasets.load_dataset("json", data_files=[datasets_file(p) for p in files], split="train", cache_dir=str(cache_dir / "hf")).to_list()
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
        write_shard(out / split, [np.asarray(ids) for ids, _ in pairs], dtype)  # each example ends with end-of-text
        counts[split] = InstructionSplit(examples=len(pairs), rows=int(len(packed["input_ids"])), tokens=sum(len(ids) for ids, _ in pairs),
                                         response_tokens=int((packed["labels"] != -100).sum()))
    write_manifest(out, InstructionManifest(
        kind="instruction",
        documents={split: c.examples for split, c in counts.items()},
        instruction=counts,
        truncated_examples=truncated,
        train_tokens=counts["train"].tokens,
        val_tokens=counts["val"].tokens,
        vocab_size=len(tokenizer),
        token_dtype=dtype,
        seq_len=spec.seq_len,
        packing=spec.instruction.packing,
        canaries=[],
    ))


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


def _tokenizer(spec: DataSpec, texts: Iterator[str] | None, out: Path):
    """A `transformers` fast tokenizer: loaded from the recipe's path, or trained on `texts`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.tokenizer.kind == "pretrained":
        tokenizer = AutoTokenizer.from_pretrained(str(spec.tokenizer.path), trust_remote_code=False)
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
        raw.train_from_iterator(texts, trainer=trainer)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS, bos_token=EOS, unk_token=None)
    tokenizer.save_pretrained(str(out))
    return tokenizer
