"""The robustness gate: its perturbations, and that it tells a brittle model from a robust one.

Two tiny Llamas are trained here, on one thread, for a few seconds each, with a byte-level
tokenizer (one token per character). The brittle one learns to copy: a document is a random
phrase, a bar, and the phrase again, so every continuation token is fixed by one context
character at a fixed distance; a dropped space or a typo shifts the copy and an unseen capital
breaks it. The robust one learns a character Markov chain: its predictions rest on the previous
character, which in the continuation is never perturbed.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from orchestrator.gates.robustness import KINDS, cut_window, perturb, robustness_gate, token_budget
from orchestrator.gates.spec import RobustnessGate

PARAGRAPH = (
    "The Secret Sharer measured how much a model memorised; this gate asks something else. When a user "
    "types quickly, letters are swapped, Capitals go missing, spaces double or vanish, and words trade "
    "places. A model worth releasing should still follow the text that comes next, at least on average. "
) * 4
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PHRASE_CHARS = 16


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, one row of the table at a time (the insertion chain as a running minimum)."""
    other = np.array([ord(c) for c in b])
    columns = np.arange(len(b) + 1)
    row = columns.copy()
    for i, char in enumerate(a, start=1):
        best = np.concatenate([[i], np.minimum(row[1:] + 1, row[:-1] + (other != ord(char)))])
        row = np.minimum.accumulate(best - columns) + columns
    return int(row[-1])


def _without(pattern: str, text: str) -> str:
    return re.sub(pattern, "", text)


# The invariant each kind keeps, and the units its rate is a share of.
INVARIANTS = {
    "typo": (lambda text: _without("[A-Za-z]", text), lambda text: len(_without("[^A-Za-z]", text))),
    "case": (str.lower, lambda text: len(_without("[^A-Za-z]", text))),
    "whitespace": (lambda text: _without(r"\s", text), len),
    "swap": (lambda text: sorted(text.split()), lambda text: len(text.split())),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_perturbation_changes_about_rate_of_its_units_and_keeps_the_rest(kind):
    invariant, units = INVARIANTS[kind]
    rate = 0.1
    perturbed = perturb(PARAGRAPH, kind, rate, np.random.default_rng(7))
    assert invariant(perturbed) == invariant(PARAGRAPH)
    if kind == "swap":
        changed = sum(a != b for a, b in zip(PARAGRAPH.split(), perturbed.split()))  # a swap moves two words
        assert rate <= changed / units(PARAGRAPH) <= 2 * rate + 0.02
    else:
        edits = _edit_distance(PARAGRAPH, perturbed)  # a typo swapping two letters is two edits, every other site one
        assert 0.7 * rate <= edits / units(PARAGRAPH) <= (2 if kind == "typo" else 1) * rate + 0.01


@pytest.mark.parametrize("kind", list(KINDS))
def test_perturbations_are_seeded_and_vanish_at_a_tiny_rate(kind):
    first = perturb(PARAGRAPH, kind, 0.05, np.random.default_rng(1))
    assert first == perturb(PARAGRAPH, kind, 0.05, np.random.default_rng(1))
    assert first != perturb(PARAGRAPH, kind, 0.05, np.random.default_rng(2))
    assert first != PARAGRAPH
    assert perturb(PARAGRAPH, kind, 1e-9, np.random.default_rng(1)) == PARAGRAPH
    assert perturb("", kind, 0.5, np.random.default_rng(1)) == ""


# -- the gate on trained models --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    """Byte-level BPE without merges: one token per character, so a perturbed character is a perturbed token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([LETTERS], trainers.BpeTrainer(vocab_size=257, special_tokens=["<|endoftext|>"], show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other work: one thread is faster and repeatable
    yield
    torch.set_num_threads(threads)


def _phrase(rng: np.random.Generator) -> str:
    words = ["".join(rng.choice(list(LETTERS), size=rng.integers(2, 6))) for _ in range(PHRASE_CHARS // 2)]
    return " ".join(words)[:PHRASE_CHARS]


def _copy_document(rng: np.random.Generator) -> str:
    phrase = _phrase(rng)
    return f"{phrase}|{phrase}"


TRANSITIONS = np.random.default_rng(3).dirichlet(np.full(27, 0.1), size=27)  # sparse: a few likely successors each


def _markov_document(rng: np.random.Generator) -> str:
    state, chars = rng.integers(27), []
    for _ in range(2 * PHRASE_CHARS + 1):
        chars.append((LETTERS + " ")[state])
        state = rng.choice(27, p=TRANSITIONS[state])
    return "".join(chars)


def _model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=128)
    return LlamaForCausalLM(config)


def _trained(tokenizer, make_document, scored_from: int, max_steps: int, until_loss: float = 0.0, batch: int = 16):
    """A tiny Llama trained on fresh documents until its batch loss falls under `until_loss` (at most
    `max_steps`; copying is learned suddenly, after a plateau whose length depends on the seed).
    Tokens before `scored_from` carry no loss."""
    import torch

    model = _model(tokenizer)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(max_steps):
        documents = [make_document(rng) for _ in range(batch)]
        ids = torch.tensor([[tokenizer.eos_token_id, *row] for row in tokenizer(documents, add_special_tokens=False)["input_ids"]])
        labels = ids.clone()
        labels[:, : scored_from + 1] = -100
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < until_loss:
            break
    return model.eval()


def _held_out(make_document) -> list[str]:
    rng = np.random.default_rng(1234)
    return [make_document(rng) for _ in range(32)]


def test_a_model_that_copies_its_context_fails(tokenizer, one_thread):
    model = _trained(tokenizer, _copy_document, scored_from=PHRASE_CHARS + 1, max_steps=400, until_loss=0.03)  # loss on the copy only
    result = robustness_gate(RobustnessGate(), model, tokenizer, _held_out(_copy_document), warn_margin=0.05)
    kinds = result.evidence["kinds"]
    assert kinds["typo"]["loss_clean"] < 0.1, "the model has not learned to copy: the test would not show brittleness"
    assert result.status == "fail" and result.value > 5 and "worst" in result.summary
    assert result.evidence["changed_top1"] > 0.1  # shifted copies (typos, whitespace) change most; capitals and swaps fewer
    assert all(k["loss_increase"] > 1 and k["changed_top1"] > 0.02 for k in kinds.values())
    assert all(k["example"]["clean"] != k["example"]["perturbed"] for k in kinds.values())


def test_a_model_that_reads_locally_passes(tokenizer, one_thread):
    model = _trained(tokenizer, _markov_document, scored_from=0, max_steps=80)
    result = robustness_gate(RobustnessGate(), model, tokenizer, _held_out(_markov_document), warn_margin=0.05)
    assert result.evidence["kinds"]["typo"]["loss_clean"] < 2.5, "the model has not learned the chain (a uniform guess is 3.3)"
    assert result.status == "pass" and result.value < 0.1 and result.evidence["changed_top1"] < 0.1
    assert result.evidence["documents"] == 32 and set(result.evidence["kinds"]) == set(KINDS)


def test_an_untrained_model_looks_robust_which_is_why_quality_is_a_separate_gate(tokenizer, one_thread):
    model = _model(tokenizer).eval()
    result = robustness_gate(RobustnessGate(perturbations=["typo", "case"]), model, tokenizer, _held_out(_copy_document), 0.05)
    assert result.status == "pass" and abs(result.value) < 0.05 and set(result.evidence["kinds"]) == {"typo", "case"}


def test_documents_too_short_to_cut_are_left_out_and_none_at_all_skip_the_gate(tokenizer):
    model = _model(tokenizer)
    assert token_budget(model) == (55, 16)
    assert cut_window(tokenizer, "too short", 55, 16) is None
    window = cut_window(tokenizer, "x" * 40, 55, 16)
    assert window.context == "x" * 30 and len(window.continuation) == 10
    assert robustness_gate(RobustnessGate(), model, tokenizer, ["tiny", ""], 0.05).status == "skipped"


def test_padding_a_batch_of_rows_does_not_move_the_scores(tokenizer):
    import torch

    from orchestrator.gates.robustness import _rows
    from orchestrator.gates.scoring import row_losses, row_scores

    model = _model(tokenizer).eval()
    contexts = ["short", "a context several times longer than the other"]
    continuation = tokenizer("next words", add_special_tokens=False)["input_ids"]
    rows = _rows(tokenizer, contexts, [continuation] * 2, room=100)
    losses, top1 = row_scores(model, rows)
    assert np.allclose(np.nanmean(losses, axis=1), row_losses(model, rows), atol=1e-5)
    for row, context in enumerate(contexts):
        ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer(context, add_special_tokens=False)["input_ids"], *continuation]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -len(continuation) - 1 : -1]
        alone = torch.nn.functional.cross_entropy(logits, ids[0, -len(continuation):]).item()
        assert np.nanmean(losses[row]) == pytest.approx(alone, abs=1e-5)
        assert top1[row][top1[row] >= 0].tolist() == logits.argmax(dim=-1).tolist()
