"""Documents from the recipe's source: the built-in corpus or local files, always through `datasets`.

The built-in corpus is the Python standard library's own source: real text that every machine
with Python has, so the default recipe needs no download.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from orchestrator.data.spec import DataSpec
from orchestrator.errors import DataError

FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
BUILDER_BY_FORMAT = {"jsonl": "json", "parquet": "parquet", "text": "text"}


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sha256: str
    bytes: int


def source_files(spec: DataSpec) -> list[Path]:
    """The files behind the recipe's data, in a stable order."""
    if spec.builtin == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.rglob("*.py") if not ({"site-packages", "test", "tests"} & set(p.relative_to(root).parts)))
    elif spec.path.is_dir():
        files = sorted(p for p in spec.path.rglob("*") if p.is_file() and p.suffix in FORMAT_BY_SUFFIX)
    else:
        files = [spec.path]
    return _cap(files, spec.max_bytes)


def fingerprint(files: list[Path]) -> list[SourceFile]:
    return [SourceFile(p, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in files]


def load_documents(spec: DataSpec, files: list[Path], cache_dir: Path):
    """A `datasets.Dataset` with one `text` column, one row per document."""
    import datasets

    if spec.builtin:
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
        return datasets.Dataset.from_dict({"text": texts})
    fmt = spec.format if spec.format != "auto" else _format_of(files)
    builder = BUILDER_BY_FORMAT[fmt]
    kwargs = {"sample_by": "document"} if fmt == "text" else {}
    dataset = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train", cache_dir=str(cache_dir), **kwargs)
    field = "text" if fmt == "text" else spec.text_field
    if field not in dataset.column_names:
        raise DataError(f"data has no `{field}` column (it has {', '.join(dataset.column_names)}): set data.text_field")
    return dataset.select_columns([field]).rename_column(field, "text") if field != "text" else dataset.select_columns(["text"])


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
