"""Documents from a recipe's source: the built-in corpus or local files (JSON Lines and Parquet
through `datasets`; text files, one document each, read directly: a `datasets` loader per file
cost 5 ms, an hour and a half per million small files).

The built-in corpus is the Python standard library's own source: real text that every machine
with Python has, so the default recipe needs no download. What counts as a data file, and how
many are listed and read, is `data.files`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from orchestrator.data.files import READ_AHEAD_BYTES, READ_BATCH, READ_THREADS, first_line, list_data_files, open_regular, ordered_map, shown
from orchestrator.data.spec import SourceSpec
from orchestrator.errors import DataError

FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
BUILDER_BY_FORMAT = {"jsonl": "json", "parquet": "parquet", "text": "text"}
FIRST_LINE_BYTES = 16 * 2**20
"""What validation reads of a JSON Lines file for its first row; a longer first row is left to preparation."""


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
        files = list_data_files(spec.path, FORMAT_BY_SUFFIX)
    else:
        files = [spec.path]
    return _cap(files, spec.max_bytes)


def file_stats(spec: SourceSpec) -> list[tuple[str, int, int]]:
    """Each of the source's files as it stands, without reading it: real path, size and modification
    time, which tell whether prepared data still matches. Below a directory the listing followed no
    link, so a file's real path is the directory's, resolved once, joined with the file's own parts
    (resolving each of 200,000 files took seconds)."""
    files = source_files(spec)
    if spec.builtin is None and spec.path.is_dir():
        root, depth = str(spec.path.resolve()), len(spec.path.parts)
        real = [os.path.join(root, *p.parts[depth:]) for p in files]
    else:
        real = [str(p.resolve()) for p in files]
    return [(path, (s := os.stat(path)).st_size, s.st_mtime_ns) for path in real]


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
    """Each file's sha256 and size, read in blocks (a source file may be larger than memory), a few files at a time."""
    return list(ordered_map(_fingerprint, files))


def _fingerprint(path: Path) -> SourceFile:
    with open_regular(path) as f:
        return SourceFile(path, hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size)


def iter_documents(spec: SourceSpec, files: list[Path], cache_dir: Path, batch_size: int = 256) -> Iterator[list[str]]:
    """The source's documents in reading order, a batch at a time: a row per line of JSON Lines and per
    row of Parquet (streamed through `datasets`), a document per text file. Memory holds a batch, not the source."""
    if spec.builtin:
        yield from _batches(_texts(files, errors="replace"), batch_size)
        return
    fmt = spec.format if spec.format != "auto" else _format_of(files)
    if fmt == "text":
        yield from _batches(_texts(files, errors="strict"), batch_size)
        return
    import datasets

    datasets.disable_progress_bars()
    field = spec.text_field
    for path in files:  # one file at a time, so an error can name it
        try:
            rows = datasets.load_dataset(BUILDER_BY_FORMAT[fmt], data_files=[datasets_file(path)], split="train",
                                         streaming=True, cache_dir=str(cache_dir))
            for batch in rows.iter(batch_size=batch_size):
                if field not in batch:
                    raise DataError(f"{shown(path)} has no `{field}` field (it has {', '.join(batch) or 'none'}): set the source's text_field")
                yield [t for t in batch[field] if isinstance(t, str)]
        except DataError:
            raise
        except Exception as exc:  # pyarrow's and datasets' own reading errors, whatever their class
            raise DataError(f"cannot read {shown(path)} as {fmt}: {_first_line_of(exc)}") from None


def datasets_file(path: Path) -> str:
    """`path` as `datasets` takes a data file: it reads data_files as glob patterns, so `a[1].jsonl`
    unescaped reads `a1.jsonl` and `*.jsonl` every file beside it."""
    return glob.escape(str(path.absolute()))


def _texts(files: list[Path], errors: str) -> Iterator[str]:
    """Each file's text in order: small files read ahead on a few threads, larger ones in their turn."""
    small = READ_AHEAD_BYTES // (2 * READ_THREADS * READ_BATCH)
    ahead = ordered_map(functools.partial(_read_text, errors=errors, most_bytes=small), files)
    for path, text in zip(files, ahead):
        yield text if text is not None else _read_text(path, errors)


def _read_text(path: Path, errors: str, most_bytes: int | None = None) -> str | None:
    """A text file as `datasets`' text loader reads one document (UTF-8, universal newlines); None
    when it holds more than `most_bytes`."""
    with open_regular(path) as f:
        if most_bytes is not None and os.fstat(f.fileno()).st_size > most_bytes:
            return None
        try:
            return io.TextIOWrapper(f, encoding="utf-8", errors=errors).read()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {shown(path)} as text: {_first_line_of(exc)}") from None


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _first_line_of(exc: Exception) -> str:
    return shown(str(exc).splitlines()[0]) if str(exc).strip() else type(exc).__name__


def first_file_problem(spec: SourceSpec) -> tuple[str, str] | None:
    """What is wrong with the source's files, read as cheaply as possible (their names and kinds, the
    first file's first JSON line or Parquet schema), so a recipe naming the wrong field or a FIFO fails
    at validation, not hours into a job: the source's key it concerns (path, format, text_field) and why."""
    if spec.path is None:
        return None
    try:
        files = source_files(spec)
    except DataError as exc:
        return "path", str(exc)
    if not files:
        return "path", f"{shown(spec.path)} holds no .jsonl, .json, .parquet, .txt or .md file"
    try:
        fmt = spec.format if spec.format != "auto" else _format_of(files)
    except DataError as exc:
        return "format", str(exc)
    try:
        fields = _first_fields(files[0], fmt)
    except DataError as exc:
        return "path", str(exc)
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        return "path", f"cannot read {shown(files[0])} as {fmt}: {_first_line_of(exc)}"
    if fields is not None and spec.text_field not in fields:
        return "text_field", f"{shown(files[0])} has no `{spec.text_field}` field (it has {', '.join(map(str, fields)) or 'none'}): set text_field"
    return None


def _first_fields(path: Path, fmt: str) -> list | None:
    """The fields of a file's first row; None for text, or a first row too long to read at validation."""
    if fmt == "jsonl":
        line = first_line(path, FIRST_LINE_BYTES)
        return None if line is None else list(json.loads(line or b"{}"))
    if fmt == "parquet":
        import pyarrow.parquet

        with open_regular(path) as f:
            return pyarrow.parquet.read_schema(f).names
    with open_regular(path):  # a text file is a document whatever it holds: only its kind is checked
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
