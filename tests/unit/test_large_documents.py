"""Documents longer than a piece (issue 30): tokenized, sampled and fingerprinted a piece at a time with
the same result as whole, and prepared in memory that does not grow with the longest document."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data import ngrams
from orchestrator.data.curate import Contamination, exact_key, line_hashes, minhash, quality_failure
from orchestrator.data.pieces import pieces
from orchestrator.data.spec import NearDedupSpec, QualitySpec
from orchestrator.data.workers import token_ids

STDLIB = Path(sysconfig.get_paths()["stdlib"])
WHOLE = 10**9
"""A piece bound no test text reaches: the document taken whole."""


def stdlib_text(chars: int) -> str:
    """Real text with every kind of whitespace run a tokenizer meets: indentation, blank lines, tabs."""
    texts, size = [], 0
    for path in sorted(STDLIB.glob("*.py")):
        texts.append(path.read_text(errors="replace"))
        size += len(texts[-1])
        if size >= chars:
            break
    return "".join(texts)[:chars]


DOCUMENT = stdlib_text(150_000) + " naïve café 東京 の\u3000 über\u00a0 Σίσυφος.  \t\n  ΣΑΣ end  "


def train_bpe(texts) -> "tokenizers.Tokenizer":  # noqa: F821
    """The byte-level BPE preparation trains (`prepare._tokenizer`), small."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    raw.train_from_iterator(texts, trainer=trainer)
    return raw


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(iter([DOCUMENT]))


@pytest.mark.parametrize("limit", [1, 2, 7, 64, 4096])
def test_pieces_rejoin_to_the_text_and_stay_within_the_bound(limit):
    for text in (DOCUMENT[:20_000], "", "x", " " * 50, "a" * 100 + "  b", "\n\n  a b\tc  "):
        cut = list(pieces(text, limit))
        assert "".join(cut) == text
        assert all(len(p) <= limit for p in cut)
        assert all(cut) or cut == [""]


@pytest.mark.parametrize("limit", [700, 4096, 65536])
def test_a_document_encoded_in_pieces_gives_the_ids_of_the_whole(tokenizer, limit):
    """Any bound longer than the document's longest stretch without a space after a non-space (639
    characters here: a piece is cut inside such a stretch only when it has to, and only there may ids differ)."""
    whole = tokenizer.encode(DOCUMENT, add_special_tokens=False).ids
    assert len(list(pieces(DOCUMENT, limit))) > 1
    ids, = token_ids(tokenizer, [DOCUMENT], limit)
    assert ids.tolist() == whole
    # Short documents batched with the long one keep their own ids, in order.
    several = token_ids(tokenizer, ["short one", DOCUMENT, "", "  two  "], limit)
    assert [s.tolist() for s in several] == [tokenizer.encode(t, add_special_tokens=False).ids for t in ["short one", DOCUMENT, "", "  two  "]]


LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def pretrained_kind(kind: str):
    """A small tokenizer built like a family of pretrained ones (`data.tokenizer.kind: pretrained`)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    if kind == "bert":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer, tokenizer.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
        tokenizer.train_from_iterator([DOCUMENT[:60_000]], trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[UNK]"], show_progress=False))
        return tokenizer
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = {
        "gpt2-prefix-space": lambda: pre_tokenizers.ByteLevel(add_prefix_space=True),
        "llama3-split": lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
                                                          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "metaspace": lambda: pre_tokenizers.Metaspace(prepend_scheme="first"),
    }[kind]()
    tokenizer.train_from_iterator([DOCUMENT[:60_000]], trainers.BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                                           show_progress=False))
    return tokenizer


@pytest.mark.parametrize("kind", ["gpt2-prefix-space", "llama3-split", "metaspace", "bert"])
def test_pretrained_tokenizer_families_give_the_ids_of_the_whole_too(kind):
    """The cut is a pre-token boundary for the families a recipe's pretrained tokenizer usually comes
    from; a normalizer that prepends a marker to every input (SentencePiece conversions: Llama 2,
    Mistral) is the exception the README names."""
    tokenizer = pretrained_kind(kind)
    ids, = token_ids(tokenizer, [DOCUMENT], 4096)
    assert ids.tolist() == tokenizer.encode(DOCUMENT, add_special_tokens=False).ids


def test_a_tokenizer_trained_on_pieces_is_the_one_trained_on_the_whole():
    assert train_bpe(pieces(DOCUMENT, 700)).to_str() == train_bpe(iter([DOCUMENT])).to_str()


def test_fingerprints_and_decontamination_read_in_pieces_decide_as_the_whole():
    spec = NearDedupSpec()
    for limit in (700, 5000):
        assert exact_key(DOCUMENT, limit) == exact_key(DOCUMENT, WHOLE)
        assert np.array_equal(minhash(DOCUMENT, spec, limit).hashvalues, minhash(DOCUMENT, spec, WHOLE).hashvalues)
    assert exact_key("A  b\nc", 2) == exact_key("a b c", WHOLE)
    assert np.array_equal(minhash("two words", spec, 6).hashvalues, minhash("two words", spec, WHOLE).hashvalues)
    # An evaluation passage of 13 words that every cut of 40 characters splits somewhere.
    item = "the quick brown fox jumps over the lazy dog while seven wise owls watch"
    needles = Contamination({13: np.unique(ngrams.ngram_hashes(ngrams.word_ids(item), 13))})
    for limit in (40, 41, 55, WHOLE):
        assert needles.found_in(stdlib_text(3000) + " " + item + " " + stdlib_text(2000), limit)
        assert not needles.found_in(stdlib_text(3000), limit)


def test_lines_read_in_blocks_are_the_lines_of_the_whole():
    """The duplicate-line rule hashes lines a block at a time, a line that spans blocks (or a line
    break split from its "\\r") whole: the lines `str.splitlines` gives, stripped, blank ones left out."""
    rng = np.random.default_rng(0)
    parts = ["a", "b", " ", "\n", "\r", "\r\n", "\u2028", "x\x1f", "\x1c", "  \n\n"]
    texts = ["".join(rng.choice(parts, size=rng.integers(0, 60))) for _ in range(500)] + [DOCUMENT[:5000], "one line" * 50]
    for text in texts:
        whole = [hash(line) for line in map(str.strip, text.splitlines()) if line]
        for limit in (1, 3, 8, 100):
            assert line_hashes(text, limit).tolist() == whole, (text, limit)
    repeated = "same line\n" * 30 + "other\n" * 20
    assert quality_failure(repeated, QualitySpec(), 7) == quality_failure(repeated, QualitySpec(), WHOLE) == "duplicate_lines"


PREPARE = """
import json, resource, sys
from pathlib import Path
from orchestrator.data.prepare import prepare_data
from orchestrator.data.spec import DataSpec
data = prepare_data(DataSpec.model_validate_json(sys.argv[1]), 0, Path(sys.argv[2]), workers=1, piece_chars=int(sys.argv[3]))
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "kept": data.manifest.curation["kept"]}))
"""


def peak_rss_kib(corpus: Path, cache: Path, piece_chars: int) -> int:
    spec = {"path": str(corpus), "tokenizer": {"sample_bytes": 2**20}, "curation": {"near_dedup": {"threshold": 0.8}}}
    done = subprocess.run([sys.executable, "-c", PREPARE, json.dumps(spec), str(cache), str(piece_chars)], cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["kept"] >= 2
    return result["peak_kib"]


def test_one_long_document_is_prepared_in_about_the_memory_of_many_short_ones(tmp_path):
    """2 MB of text as one document and as 700 documents, each prepared in a fresh process (near
    deduplication on): before documents were cut into pieces the one document took about twice the
    peak memory (encoding it whole costs about a hundred times its size, its MinHash as much again);
    now the difference is a few copies of the document (reading, redaction, the scratch file)."""
    text = " ".join(stdlib_text(2_100_000).split(" ")[:-1])[:2_000_000]
    texts = {"one": [text, text[:150_000][::-1]], "many": [text[i : i + 3000] for i in range(0, len(text), 3000)] + [text[:150_000][::-1]]}
    peaks = {}
    for name, documents in texts.items():
        corpus = tmp_path / f"{name}.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in documents))
        peaks[name] = peak_rss_kib(corpus, tmp_path / f"cache-{name}", piece_chars=4096)
    assert peaks["one"] < 1.3 * peaks["many"], peaks
