"""Data preparation for real (datasets, tokenizers, worker processes): the same shards whatever the
number of workers, curation that counts and removes what was planted, a tokenizer trained on a
bounded sample, mixtures per source (each capped), one readable line for bad sources, and no staging
directory left behind by a killed preparation."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data import prepare as prepare_module
from orchestrator.data.curate import redact
from orchestrator.data.prepare import prepare_data
from orchestrator.data.spec import DataSpec
from orchestrator.errors import DataError

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file's bytes; the manifest's without the phases' timings (how long, with how many workers)."""
    files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    assert manifest.pop("seconds")["workers"] in (1, 2)
    return files | {"manifest.json": json.dumps(manifest).encode()}


def test_two_workers_write_the_same_shards_as_one(tmp_path):
    spec = DataSpec(builtin="python-stdlib", max_bytes=400_000, shard_bytes=40_000)
    one = prepare_data(spec, 0, tmp_path / "one", workers=1)
    two = prepare_data(spec, 0, tmp_path / "two", workers=2)
    assert one.dir.name == two.dir.name  # the number of workers is not part of what was prepared
    assert len(two.sources[0].shards["train"]) >= 4  # chunks enough for both workers to take several
    assert files_of(one.dir) == files_of(two.dir)


def paragraphs(count: int) -> list[str]:
    """Distinct real documents: the openings of stdlib modules, those without personal data of their own
    (many name their authors' e-mail addresses)."""
    texts = []
    for path in sorted(STDLIB.glob("*.py")):
        text = path.read_text(errors="replace")[:3000]
        if len(text) == 3000 and not redact(text)[1]:
            texts.append(text)
        if len(texts) == count:
            return texts
    raise AssertionError("not enough stdlib modules")


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A corpus with exact duplicates, near duplicates, personal data and a copied evaluation file."""
    root = tmp_path_factory.mktemp("planted")
    base = paragraphs(40)
    evaluation = root / "eval.jsonl"
    items = [f"question {i}: what does the function frobnicate_{i} return when the widget count reaches {i * 7} and the cache is cold"
             for i in range(5)]
    write_jsonl(evaluation, items)
    near = []
    for text in base[:4]:
        words = text.split()
        words[len(words) // 2] = "CHANGED"  # one word of some four hundred
        near.append(" ".join(words))
    exact = [base[5].upper(), "  ".join(base[6].split())]  # equal up to case and whitespace
    pii = [base[10] + "\nContact jane.roe@example.org or card 4111 1111 1111 1111.", base[11] + "\nssn 123-45-6789, call +1 (415) 555-2671"]
    copied = [base[12] + "\n" + items[2]]
    corpus = write_jsonl(root / "corpus.jsonl", base[:10] + near + exact + pii + base[13:] + copied)
    spec = DataSpec(path=corpus, decontaminate=[evaluation], val_fraction=0.1, shard_bytes=20_000, curation={"near_dedup": {"threshold": 0.8}})
    data = prepare_data(spec, 0, root / "cache", workers=2)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(data.tokenizer_dir))
    decoded = "\n".join(tokenizer.decode(np.asarray(d).tolist()) for split in ("train", "val") for d in data.tokens(split).documents())
    return {"manifest": data.manifest, "decoded": decoded, "items": items}


def test_curation_counts_each_kind_in_the_manifest(planted):
    counts = planted["manifest"].curation
    assert counts["read"] == 10 + 4 + 2 + 2 + 27 + 1
    assert counts["exact_duplicates"] == 2 and counts["near_duplicates"] == 4 and counts["decontaminated"] == 1
    assert counts["pii_email"] == 1 and counts["pii_card"] == 1 and counts["pii_national_id"] == 1 and counts["pii_phone"] == 1
    assert counts["pii_documents"] == 2
    assert counts["kept"] == counts["read"] - 7
    assert planted["manifest"].documents["train"] + planted["manifest"].documents["val"] == counts["kept"]


def test_the_prepared_tokens_no_longer_contain_what_was_removed(planted):
    decoded = planted["decoded"]
    for secret in ("jane.roe@example.org", "4111 1111 1111 1111", "123-45-6789", "555-2671", "CHANGED"):
        assert secret not in decoded
    assert "<EMAIL>" in decoded and "<CARD_NUMBER>" in decoded and "<NATIONAL_ID>" in decoded and "<PHONE>" in decoded
    assert not any(item in decoded for item in planted["items"])


def test_the_tokenizer_is_trained_on_a_bounded_sample(tmp_path, monkeypatch):
    seen = []
    train = prepare_module._tokenizer

    def recording(spec, texts, out):
        texts = list(texts)
        seen.append(sum(len(t) for t in texts))
        return train(spec, iter(texts), out)

    monkeypatch.setattr(prepare_module, "_tokenizer", recording)
    spec = DataSpec(builtin="python-stdlib", max_bytes=600_000, shard_bytes=60_000, tokenizer={"sample_bytes": 100_000})
    data = prepare_data(spec, 0, tmp_path, workers=1)
    chunks = len(data.sources[0].shards["train"])
    assert 90_000 <= seen[0] <= 100_000 + chunks, seen  # from every chunk, its share, cut to fit
    assert data.vocab_size == 4096


def test_a_mixture_is_prepared_per_source_with_its_weight(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", paragraphs(30)[:20])
    b = write_jsonl(tmp_path / "b.jsonl", paragraphs(30)[20:])
    spec = DataSpec(sources=[{"path": a, "weight": 3}, {"path": b, "weight": 1, "name": "small"}], shard_bytes=20_000,
                    curation={"near_dedup": None})
    data = prepare_data(spec, 0, tmp_path / "cache")
    assert [s.name for s in data.sources] == ["a", "small"] and data.weights == [3, 1]
    assert [len(t) for t in data.source_tokens("train")] == [s.train_tokens for s in data.sources]
    assert data.train_tokens == sum(s.train_tokens for s in data.sources)


def test_a_mixture_caps_each_source_at_data_max_bytes_unless_it_sets_its_own(tmp_path):
    """A mixture on `base: tiny-pretrain.yaml` (which caps its one source at 4 MB): each source reads
    about 4 MB, as the base's source did, not all of its text; a source's own cap still wins."""
    from orchestrator.data.corpus import source_files
    from orchestrator.recipe.loader import load_recipe

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        write_jsonl(docs / f"part-{i:02d}.jsonl", paragraphs(20))
    recipe = tmp_path / "mixture.yaml"
    recipe.write_text(f"base: {Path(__file__).parents[2] / 'recipes' / 'tiny-pretrain.yaml'}\n"
                      f"data:\n  builtin: null\n  sources:\n    - {{builtin: python-stdlib, name: code}}\n"
                      f"    - {{path: {docs}, max_bytes: 5000}}\n")
    code, own = load_recipe(recipe).recipe.data.mixture()
    assert code.max_bytes == 4_000_000 and own.max_bytes == 5000
    read = sum(p.stat().st_size for p in source_files(code))
    assert 4_000_000 <= read < 4_000_000 + max(p.stat().st_size for p in source_files(code))  # whole files, up to the cap
    assert len(source_files(own)) < 40


def test_bad_sources_are_one_readable_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "no text field here"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl has no `text` field \(it has body\)"):
        prepare_data(DataSpec(path=rows), 0, tmp_path / "cache")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"cannot read .*broken.parquet as parquet"):
        prepare_data(DataSpec(path=broken), 0, tmp_path / "cache")
    tiny = write_jsonl(tmp_path / "tiny.jsonl", ["a few words", "and a few more"])
    with pytest.raises(DataError, match="fewer than one sequence"):
        prepare_data(DataSpec(path=tiny, val_fraction=0.4), 0, tmp_path / "cache")


BLOCKED_PREPARATION = """
import sys
from pathlib import Path
from orchestrator.data import prepare
from orchestrator.data.spec import DataSpec

def build(spec, seed, files, out, cache_dir, workers, piece_chars):
    print(out, flush=True)
    sys.stdin.read()  # until the test lets it go

prepare._build = build
prepare.prepare_data(DataSpec.model_validate_json(sys.argv[1]), 0, Path(sys.argv[2]))
"""


def blocked_preparation(spec: DataSpec, cache: Path) -> tuple[subprocess.Popen, Path]:
    """A preparation of `spec` in its own process, stopped while it builds: the process and its staging directory."""
    process = subprocess.Popen([sys.executable, "-c", BLOCKED_PREPARATION, spec.model_dump_json(), str(cache)],
                               cwd=Path(__file__).parents[2], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


def test_a_killed_preparation_leaves_nothing_a_running_one_keeps_its_staging(tmp_path):
    """Staging directories of preparations that were killed (or left by versions before owner locks) go at
    the next preparation; one a concurrent preparation of the same key is still building stays, and that
    preparation then finds the data published and drops its own."""
    spec = DataSpec(path=write_jsonl(tmp_path / "docs.jsonl", paragraphs(12)), curation={"near_dedup": None})
    cache = tmp_path / "cache"
    killed, abandoned = blocked_preparation(spec, cache)
    killed.kill()
    killed.communicate()
    running, building = blocked_preparation(spec, cache)
    ownerless = abandoned.with_name(abandoned.name.split("-")[0] + "-old")
    ownerless.mkdir()
    try:
        data = prepare_data(spec, 0, cache, workers=1)
        assert data.dir.name == abandoned.name.split("-")[0][1:]  # the same key as the killed and the running one
        assert not abandoned.exists() and not ownerless.exists()
        assert building.is_dir()
    finally:
        running.communicate()  # lets it go
    assert running.returncode == 0
    assert not building.exists()
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == [".staging.lock"]


def test_a_file_system_without_locks_stages_as_before(tmp_path, monkeypatch):
    """Lustre mounted without `flock` answers ENOSYS: preparation goes on, and clears nothing it cannot tell is abandoned."""
    import errno
    import fcntl

    from orchestrator.data import staging

    def unsupported(file, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    other = tmp_path / ".0123456789abcdef-other"
    other.mkdir()
    with staging.staged(tmp_path, "fedcba9876543210") as staged:
        assert staged.is_dir() and other.is_dir()
    assert not staged.exists() and other.is_dir()
