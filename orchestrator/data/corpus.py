"""Documents from a recipe's source: the built-in corpus or local files, always through `datasets`.

The built-in corpus is the Python standard library's own source: real text that every machine
with Python has, so the default recipe needs no download.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from orchestrator.data.spec import SourceSpec
from orchestrator.errors import DataError

FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
BUILDER_BY_FORMAT = {"jsonl": "json", "parquet": "parquet", "text": "text"}


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sha256: str
    bytes: int


def source_files(spec: SourceSpec) -> list[Path]:
    """The files behind one source, in a stable order."""
    if spec.builtin == "python-stdlib":
        files = list(_stdlib_sources())
    elif spec.path.is_dir():
        files = sorted(p for p in spec.path.rglob("*") if p.is_file() and p.suffix in FORMAT_BY_SUFFIX)
    else:
        files = [spec.path]
    return _cap(files, spec.max_bytes)


@functools.cache
def _stdlib_sources() -> tuple[Path, ...]:
    """The standard library's modules, without its tests and installed packages. Pruned while
    walking: every `orch run` looks them up, and descending into site-packages first took seconds."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in ("site-packages", "test", "tests")]
        found += [Path(directory, name) for name in names if name.endswith(".py")]
    return tuple(sorted(found))


def fingerprint(files: list[Path]) -> list[SourceFile]:
    """Each file's sha256, read in blocks (a source file may be larger than memory)."""
    def digest(path: Path) -> str:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    return [SourceFile(p, digest(p), p.stat().st_size) for p in files]


def iter_documents(spec: SourceSpec, files: list[Path], cache_dir: Path, batch_size: int = 256) -> Iterator[list[str]]:
    """The source's documents in reading order, a batch at a time, streamed through `datasets`
    (a row per line of JSON Lines, per row of Parquet, per text file): memory holds a batch, not the source."""
    import datasets

    datasets.disable_progress_bars()
    if spec.builtin:
        for start in range(0, len(files), batch_size):
            yield [p.read_text(encoding="utf-8", errors="replace") for p in files[start : start + batch_size]]
        return
    fmt = spec.format if spec.format != "auto" else _format_of(files)
    field = "text" if fmt == "text" else spec.text_field
    for path in files:  # one file at a time, so an error can name it
        kwargs = {"sample_by": "document"} if fmt == "text" else {}
        try:
            rows = datasets.load_dataset(BUILDER_BY_FORMAT[fmt], data_files=[str(path)], split="train", streaming=True,
                                         cache_dir=str(cache_dir), **kwargs)
            for batch in rows.iter(batch_size=batch_size):
                if field not in batch:
                    raise DataError(f"{path} has no `{field}` field (it has {', '.join(batch) or 'none'}): set the source's text_field")
                yield [t for t in batch[field] if isinstance(t, str)]
        except DataError:
            raise
        except Exception as exc:  # pyarrow's and datasets' own reading errors, whatever their class
            raise DataError(f"cannot read {path} as {fmt}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def first_file_problem(spec: SourceSpec) -> str | None:
    """What is wrong with the source's first file, read as cheaply as possible (its first JSON line,
    its Parquet schema), so a recipe naming the wrong field fails at validation, not hours into a job."""
    if spec.path is None:
        return None
    files = source_files(spec)
    if not files:
        return f"{spec.path} holds no .jsonl, .json, .parquet, .txt or .md file"
    try:
        fmt = spec.format if spec.format != "auto" else _format_of(files)
    except DataError as exc:
        return str(exc)
    path = files[0]
    try:
        if fmt == "jsonl":
            with path.open("rb") as f:
                line = next((raw for raw in f if raw.strip()), b"{}")
            fields = list(json.loads(line))
        elif fmt == "parquet":
            import pyarrow.parquet

            fields = pyarrow.parquet.read_schema(path).names
        else:
            return None
    except (OSError, ValueError, TypeError) as exc:
        return f"cannot read {path} as {fmt}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if spec.text_field not in fields:
        return f"{path} has no `{spec.text_field}` field (it has {', '.join(map(str, fields)) or 'none'}): set text_field"
    return None


def _format_of(files: list[Path]) -> str:
    formats = {FORMAT_BY_SUFFIX.get(p.suffix) for p in files}
    if len(formats) != 1 or None in formats:
        raise DataError(f"cannot tell the data format from the file names ({', '.join(sorted({p.suffix for p in files}))}): set data.format")
    return formats.pop()


def _cap(files: list[Path], max_bytes: int | None) -> list[Path]:
    if max_bytes is None:
        return files
    kept, total = [], 0
    for path in files:
        if total >= max_bytes:
            break
        kept.append(path)
        total += path.stat().st_size
    return kept
