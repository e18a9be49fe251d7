"""What preparation accepts as data: regular files only (a FIFO blocked `orch validate` and preparation
forever, `/dev/zero` read until memory ran out), each refused in one line, at validation and again
when a file is opened; odd file names (dots only, a newline, a leading dash, glob characters) prepared
under their own names; a directory listed in the order it always was, its text files read as
`datasets` read them. Cases that blocked run in a fresh interpreter with a deadline and a memory
bound, so a regression fails instead of hanging the suite or filling the machine."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data.corpus import iter_documents, source_files
from orchestrator.data.files import first_line, list_data_files
from orchestrator.data.prepare import prepare_data
from orchestrator.data.spec import DataSpec, SourceSpec
from orchestrator.errors import DataError
from tests.helpers.project import ROOT, TINY

MEMORY_BYTES = 4 * 2**30


def bounded(argv: list[str], timeout_s: int = 60) -> subprocess.CompletedProcess:
    """`argv` in a fresh interpreter that a blocked read cannot keep past `timeout_s` (TimeoutExpired
    fails the test) and an endless one cannot let grow past MEMORY_BYTES."""
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES)))


def test_special_files_a_recipe_names_are_one_line_each_at_validate(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    os.mkfifo(tmp_path / "eval.jsonl")
    sources = (f"[{{path: {tmp_path / 'pipe.jsonl'}}}, {{path: /dev/zero, format: jsonl, name: z}}, "
               "{path: /dev/zero, format: text, name: t}]")
    result = bounded(["-m", "orchestrator", "validate", str(TINY), "data.builtin=null", f"data.sources={sources}",
                      f"data.decontaminate=[{tmp_path / 'eval.jsonl'}]"])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    keys = [re.search(r": (data\.[\w.]+): ", line)[1] for line in lines]
    assert keys == ["data.sources.0.path", "data.sources.1.path", "data.sources.2.path", "data.decontaminate.0"]
    assert "pipe.jsonl is a FIFO, not a regular file or a directory" in lines[0]
    assert "/dev/zero is a character device" in lines[1] and "/dev/zero is a character device" in lines[2]
    assert "eval.jsonl is a FIFO, not a regular file" in lines[3]


OPENED_WHILE_PREPARING = """
import json, sys
from pathlib import Path
from orchestrator.data.corpus import fingerprint
from orchestrator.data.curate import contamination_from
from orchestrator.data.prepare import prepare_data
from orchestrator.data.spec import DataSpec
from orchestrator.errors import DataError

fifo, cache = Path(sys.argv[1]), Path(sys.argv[2])
said = []
for attempt in (lambda: prepare_data(DataSpec(path=fifo), 0, cache), lambda: contamination_from([fifo]),
                lambda: fingerprint([Path("/dev/zero")])):
    try:
        attempt()
        said.append("read")
    except DataError as exc:
        said.append(str(exc))
print(json.dumps(said))
"""


def test_a_special_file_met_while_preparing_is_refused_without_blocking(tmp_path):
    """A file that became a FIFO after validation (or a preparation started without it) is refused
    where it is opened: the data's hash, the decontamination file's reader."""
    os.mkfifo(tmp_path / "pipe.jsonl")
    result = bounded(["-c", OPENED_WHILE_PREPARING, str(tmp_path / "pipe.jsonl"), str(tmp_path / "cache")])
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout)
    assert [s.partition(" is ")[2] for s in said] == ["a FIFO, not a regular file: data is read from regular files only"] * 2 + [
        "a character device, not a regular file: data is read from regular files only"]


def write_jsonl(path: Path, *texts: str) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_odd_file_names_are_prepared_under_names_of_their_own(tmp_path):
    """`...jsonl` named its source `..`, whose shard directory was the staging directory's parent (a
    FileExistsError); `a[1].jsonl` was read as the glob pattern it looks like (the rows of `a1.jsonl`)."""
    def text(n: str) -> str:
        return f"the quick brown fox jumps over the lazy dog, document number {n} of a corpus with odd names. " * 4

    dots = write_jsonl(tmp_path / "...jsonl", *(text(f"d{i}") for i in range(20)))
    newline = write_jsonl(tmp_path / "-new\nline x.jsonl", *(text(f"n{i}") for i in range(20)))
    (tmp_path / "globs").mkdir()
    write_jsonl(tmp_path / "globs" / "a[1].jsonl", *(text(f"g{i}") for i in range(20)))
    write_jsonl(tmp_path / "globs" / "a1.jsonl", text("g0"))
    spec = DataSpec(sources=[{"path": dots}, {"path": newline}, {"path": tmp_path / "globs"}], seq_len=16, tokenizer={"kind": "byte"},
                    curation={"redact_pii": False})
    data = prepare_data(spec, 0, tmp_path / "cache", workers=1)
    assert [s.name for s in data.sources] == ["data", "new_line_x", "globs"]
    assert [s.curation["read"] for s in data.sources] == [20, 20, 21]  # a1.jsonl's row once more, not in place of a[1]'s
    shards = [shard for s in data.sources for split in s.shards.values() for shard in split]
    assert all((data.dir / shard).resolve().is_relative_to(data.dir) for shard in shards)


def test_prepare_takes_no_more_workers_than_a_recipe_may_ask(monkeypatch):
    from orchestrator.data import prepare

    monkeypatch.setattr(prepare, "prepare_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("prepared")))
    result = CliRunner().invoke(app, ["prepare", str(TINY), "--workers", "1025"])
    assert result.exit_code == 2 and "1024" in result.output, result.output


def test_a_directory_lists_in_sorted_order_and_its_text_reads_as_datasets_reads_it(tmp_path):
    """The listing and the direct read of text files keep the documents (and so the prepared data's
    cache key) of every existing corpus: the order of `sorted(rglob)`, `datasets`' text loader's text."""
    import datasets

    contents = {"a/z.txt": b"crlf\r\nline\r\n", "a.txt": b"\xef\xbb\xbfbom", "a-b.txt": b"cr\ronly\r", "empty.txt": b"", "B.md": b"upper",
                "b/c/deep.md": "unicod\u00e9 \u4e2d\u6587\n".encode(), ".hidden.txt": b"hidden", "notes.csv": b"not data", ".txt": b"no suffix"}
    for name, content in contents.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    suffixes = (".txt", ".md")
    files = list_data_files(tmp_path, suffixes)
    assert files == sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in suffixes)
    read = [t for batch in iter_documents(SourceSpec(path=tmp_path), files, tmp_path / "hf") for t in batch]
    loaded = datasets.load_dataset("text", data_files=[str(p) for p in files], sample_by="document", split="train", streaming=True,
                                   cache_dir=str(tmp_path / "hf"))
    assert read == [row["text"] for row in loaded]
    assert source_files(SourceSpec(path=tmp_path)) == files


def test_validation_reads_a_bounded_first_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n  \n" + b'{"text": "' + b"x" * 100 + b'"}\n')
    assert first_line(path, 1000).startswith(b'{"text"') and first_line(path, 50) is None
    path.write_bytes(b"\n" * 10)
    assert first_line(path, 1000) == b""


def test_a_listing_is_reused_until_a_directory_changes(tmp_path, monkeypatch):
    """Validation, the plan and preparation list the same directory once while no directory of it changed."""
    from orchestrator.data import files

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    for directory in (tmp_path, tmp_path / "a"):
        os.utime(directory, ns=(0, 0))  # settled long ago
    first = list_data_files(tmp_path, (".txt",))
    with monkeypatch.context() as patched:
        patched.setattr(files, "_walk", lambda *args: pytest.fail("listed again"))
        assert list_data_files(tmp_path, (".txt",)) == first == [tmp_path / "a" / "x.txt"]
    (tmp_path / "a" / "y.txt").write_text("y")
    assert list_data_files(tmp_path, (".txt",)) == [tmp_path / "a" / "x.txt", tmp_path / "a" / "y.txt"]
    (tmp_path / "a" / "x.txt").unlink()
    os.mkfifo(tmp_path / "a" / "x.txt")
    with pytest.raises(DataError, match="x.txt is a FIFO"):
        list_data_files(tmp_path, (".txt",))


def test_files_the_gates_read_are_regular_files_at_validate_and_when_read(tmp_path):
    """A FIFO as the bias pairs or an evaluation file once read as "no such file" at validate, and the
    gate, reading it later, would have waited on it."""
    from orchestrator.gates.quality import read_pairs

    os.mkfifo(tmp_path / "pairs.jsonl")
    result = bounded(["-m", "orchestrator", "validate", str(TINY), f"gates.bias.pairs={tmp_path / 'pairs.jsonl'}",
                      "gates.contamination.eval_files=[/dev/zero]"])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 2, result.stderr
    assert "gates.bias.pairs" in lines[0] and "pairs.jsonl is a FIFO" in lines[0]
    assert "gates.contamination.eval_files.0" in lines[1] and "/dev/zero is a character device" in lines[1]
    with pytest.raises(ValueError, match="is a FIFO"):
        read_pairs(tmp_path / "pairs.jsonl")
