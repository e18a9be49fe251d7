"""Contamination in words: an evaluation file copied into the training data is found whatever the
tokenizer (byte, BPE, a pretrained WordPiece one), and a clean corpus passes with each. The data goes
through the real preparation step (datasets, tokenizers); no model is needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data.prepare import prepare_data
from orchestrator.shared.data.shards import TokenShards, write_shard
from orchestrator.data.spec import DataSpec
from orchestrator.data.ngrams import EvaluationSet, read_eval_file, set_ngram
from orchestrator.gates.contamination import contaminated, contamination_gate, decoded_texts
from orchestrator.gates.spec import ContaminationGate

WORDS = ("river stone market window garden letter morning engine yellow quiet number paper silver forest bridge "
         "teacher orange window table mountain basket candle doctor island pocket rabbit summer winter thunder violin").split()


def _sentences(seed: int, count: int, length: int = 18) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=length)).capitalize() + "." for _ in range(count)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("contamination")
    evaluation = root / "eval.jsonl"
    questions = _sentences(1, 40)
    evaluation.write_text("".join(json.dumps({"question": q, "answer": "yes"}) + "\n" for q in questions))
    documents = [" ".join(_sentences(100 + i, 6)) for i in range(300)]
    clean, dirty = root / "clean.jsonl", root / "dirty.jsonl"
    clean.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    # The copies keep the evaluation text but not its layout: a training page quotes it in its own words around it.
    copies = [f"Quiz of the week: {q.upper()} Answer: yes" for q in questions]
    dirty.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents + copies))
    return {"eval": evaluation, "clean": clean, "dirty": dirty, "root": root}


def _wordpiece(directory: Path, corpus: Path) -> Path:
    """A pretrained tokenizer of another family than the project's byte-level ones: lower-casing WordPiece."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    raw.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[UNK]", "[EOS]"], show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="[EOS]", unk_token="[UNK]").save_pretrained(str(directory))
    return directory


@pytest.mark.parametrize("tokenizer", ["byte", "bpe", "pretrained"])
def test_a_copied_evaluation_file_fails_and_a_clean_corpus_passes_whatever_the_tokenizer(corpora, tokenizer):
    from transformers import AutoTokenizer

    extra = {}
    if tokenizer == "pretrained":
        extra = {"path": str(_wordpiece(corpora["root"] / "wordpiece", corpora["clean"]))}
    evaluation = read_eval_file(corpora["eval"])
    shares = {}
    for corpus in ("clean", "dirty"):
        spec = DataSpec(path=corpora[corpus], seq_len=64, val_fraction=0.05, tokenizer={"kind": tokenizer, "vocab_size": 512, **extra})
        prepared = prepare_data(spec, seed=0, cache_dir=corpora["root"] / "cache")
        loaded = AutoTokenizer.from_pretrained(str(prepared.tokenizer_dir))
        result = contamination_gate(ContaminationGate(), [evaluation], decoded_texts(prepared.tokens("train"), loaded), 0.05)
        shares[corpus] = result
    assert shares["clean"].status == "pass" and shares["clean"].value == 0.0, shares["clean"].summary
    dirty = shares["dirty"]
    assert dirty.status == "fail" and dirty.value > 0.8, dirty.summary  # the copies not held out for validation
    assert dirty.evidence["sets"][0]["tested"] == 40 and dirty.evidence["sets"][0]["examples"]


def test_short_items_lower_n_to_their_length_but_never_below_eight():
    assert set_ngram(_sentences(0, 20, length=30), 13) == 13
    assert set_ngram(_sentences(0, 20, length=10), 13) == 10
    assert set_ngram(["too short to test"] * 5 + _sentences(0, 20, length=30), 13) == 8


def test_an_item_is_contaminated_by_one_shared_ngram_and_short_items_are_untested():
    items = ["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi", "one two three", "a b c d e f g h i j k l m n"]
    training = ["prose before ALPHA, beta; gamma delta epsilon zeta eta theta iota kappa lambda mu nu! and after"]
    (row,) = contaminated([EvaluationSet("set", items)], training, 13)
    assert row["tested"] == 2 and row["contaminated"] == 1 and row["examples"] == [items[0]]


def test_no_evaluation_set_skips_the_gate():
    assert contamination_gate(ContaminationGate(), [], iter(["text"]), 0.05).status == "skipped"


def test_decoded_texts_read_whole_documents_across_shards(tmp_path):
    class Tok:
        eos_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(96 + i) for i in ids)

    write_shard(tmp_path / "a", [np.array([1, 2, 0]), np.array([3, 0])], "uint16")
    write_shard(tmp_path / "b", [np.array([4, 5, 0])], "uint16")
    shards = TokenShards([tmp_path / "a", tmp_path / "b"], "uint16")
    assert list(decoded_texts(shards, Tok())) == ["ab", "c", "de"]
    assert list(decoded_texts(shards, Tok(), max_tokens=1)) == ["a", "b", "c", "d", "e"]
    assert len(shards) == 8 and shards[1:7].tolist() == [2, 0, 3, 0, 4, 5]  # one slice across the two files
