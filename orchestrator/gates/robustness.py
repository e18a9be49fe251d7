"""Robustness: how far small, random input noise moves the model's loss and greedy predictions.

Each held-out document is cut into a context (up to 96 tokens) and the continuation that follows
it (up to 32 tokens; both less where the model has few positions). The context is perturbed, the
continuation never is, so the targets stay the same tokens and the losses are comparable: for each
kind of perturbation the gate compares the mean loss on the clean continuation given the perturbed
context with the loss given the clean one (relative increase = perturbed / clean - 1), and counts
the continuation positions whose greedy (top-1) prediction changed. Perturbations, each at `rate`
of the eligible units and seeded per document and kind:

- `typo`: a letter is replaced, deleted, doubled by an inserted letter, or swapped with the next;
- `case`: a cased letter changes case;
- `whitespace`: a whitespace character is doubled or dropped; any other character gets a space before it;
- `swap`: a word changes place with the next word (nothing is replaced: no synonyms).

What this does not show:

- It is not a worst-case attack. The noise is random at a fixed rate; an adversary searching for
  the damaging edit (HotFlip or GCG-style gradient-guided token search, TextFooler's synonym
  substitutions, prompt injection) finds far larger effects than this average.
- It is relative to the model's own clean behaviour. A model that is bad everywhere (a random
  initialisation ignores its input) barely moves and looks robust; the quality gate covers
  absolute quality. Conversely, text the model predicts almost perfectly (memorised,
  boilerplate) has a clean loss near zero, so any disturbance is a large ratio.
- Only the continuation is scored: the question is whether a noisy prompt derails what follows,
  not whether the model models noisy text (the perturbed tokens themselves carry no loss), nor
  whether a changed prediction is worse (the loss says that, the top-1 share does not).
- Meaning-preserving rewrites (paraphrase, synonyms), other languages' noise (diacritics,
  scripts without case or spaces: there `case` and `swap` change nothing) and sampled generations
  are not measured. Figures depend on the tokenizer (a typo splits a word into rarer pieces) and
  are comparable only between models sharing one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import islice
from typing import Callable

import numpy as np

from orchestrator.data.instruct import IGNORE
from orchestrator.gates.result import GateResult, judge, skipped
from orchestrator.gates.scoring import row_scores
from orchestrator.gates.spec import RobustnessGate

CONTEXT_TOKENS = 96
CONTINUATION_TOKENS = 32
MIN_CONTINUATION_TOKENS = 4
EXAMPLE_CHARS = 160
LETTERS = "abcdefghijklmnopqrstuvwxyz"

Units = list[str]


def _chars(text: str) -> Units:
    return list(text)


def _words(text: str) -> Units:
    return re.split(r"(\s+)", text)  # words at even indices, the whitespace between them at odd ones


def _letter(units: Units, i: int) -> bool:
    return units[i].isalpha()


def _cased(units: Units, i: int) -> bool:
    return units[i].lower() != units[i].upper()


def _any(units: Units, i: int) -> bool:
    return True


def _word_with_next(units: Units, i: int) -> bool:
    return i % 2 == 0 and i + 2 < len(units) and bool(units[i]) and bool(units[i + 2])


def _typo(units: Units, i: int, rng: np.random.Generator) -> None:
    """Edits are made inside unit `i` (or by swapping it with `i + 1`), so the indices of later sites hold."""
    char = units[i]
    other = LETTERS.replace(char.lower(), "")[rng.integers(25)]
    other = other.upper() if char.isupper() else other
    operation = rng.integers(4)
    if operation == 1:
        units[i] = ""
    elif operation == 2:
        units[i] = char + other
    elif operation == 3 and i + 1 < len(units) and units[i + 1].isalpha() and units[i + 1] != char:
        units[i], units[i + 1] = units[i + 1], char
    else:
        units[i] = other


def _flip_case(units: Units, i: int, rng: np.random.Generator) -> None:
    units[i] = units[i].swapcase()


def _space(units: Units, i: int, rng: np.random.Generator) -> None:
    char = units[i]
    if char.isspace():
        units[i] = char * 2 if rng.random() < 0.5 else ""
    else:
        units[i] = " " + char


def _swap_words(units: Units, i: int, rng: np.random.Generator) -> None:
    units[i], units[i + 2] = units[i + 2], units[i]


Edit = Callable[[Units, int, np.random.Generator], None]
KINDS: dict[str, tuple[Callable[[str], Units], Callable[[Units, int], bool], Edit]] = {
    "typo": (_chars, _letter, _typo),
    "case": (_chars, _cased, _flip_case),
    "whitespace": (_chars, _any, _space),
    "swap": (_words, _word_with_next, _swap_words),
}


def perturb(text: str, kind: str, rate: float, rng: np.random.Generator) -> str:
    """`text` with `rate` of its eligible units edited (letters for typos, cased letters for case,
    every character for whitespace, words with a right neighbour for swaps)."""
    split, eligible, edit = KINDS[kind]
    units = split(text)
    for i in _sites([i for i in range(len(units)) if eligible(units, i)], rate, rng):
        edit(units, i, rng)
    return "".join(units)


def _sites(eligible: list[int], rate: float, rng: np.random.Generator) -> list[int]:
    # Stochastic rounding: on average exactly `rate` of the units, short texts included.
    count = min(len(eligible), int(rate * len(eligible) + rng.random()))
    return sorted(rng.choice(eligible, size=count, replace=False).tolist()) if count else []


@dataclass(frozen=True)
class Window:
    """One held-out document cut for the measurement: the context text (to perturb) and the ids of
    the continuation that followed it (scored, never perturbed)."""

    context: str
    continuation: list[int]


def token_budget(model) -> tuple[int, int]:
    """(context, continuation) tokens: 96 and 32, fewer where the model has few positions, leaving
    room for a perturbed context to take more tokens than the clean one."""
    positions = _positions(model)
    continuation = min(CONTINUATION_TOKENS, positions // 8)
    return min(CONTEXT_TOKENS, (positions - 1 - continuation) // 2), continuation


def _positions(model) -> int:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1024


def cut_window(tokenizer, text: str, context_tokens: int, continuation_tokens: int) -> Window | None:
    """The document's first tokens as context and continuation (a quarter of them at most for the
    continuation); None when it is too short to hold a continuation of a few tokens."""
    span = context_tokens + continuation_tokens
    ids = tokenizer(text[: 32 * span], add_special_tokens=False)["input_ids"][:span]  # a token rarely spans 32 characters
    continuation = min(continuation_tokens, len(ids) // 4)
    if continuation < MIN_CONTINUATION_TOKENS:
        return None
    context = min(context_tokens, len(ids) - continuation)
    return Window(tokenizer.decode(ids[:context]), ids[context : context + continuation])


def _rows(tokenizer, contexts: list[str], continuations: list[list[int]], room: int) -> dict[str, np.ndarray]:
    """Rows of end-of-text, context, continuation, right-padded; only the continuation is a target.
    A context over `room` tokens keeps its end, next to the continuation."""
    eos = tokenizer.eos_token_id
    encoded = [tokenizer(c, add_special_tokens=False)["input_ids"][-room:] for c in contexts]
    shape = (len(encoded), max(1 + len(ids) + len(cont) for ids, cont in zip(encoded, continuations)))
    rows = {"input_ids": np.full(shape, eos, dtype=np.int64), "labels": np.full(shape, IGNORE, dtype=np.int64),
            "segments": np.zeros(shape, dtype=np.int64)}
    for row, (ids, cont) in enumerate(zip(encoded, continuations)):
        length = 1 + len(ids) + len(cont)
        rows["input_ids"][row, 1:length] = ids + cont
        rows["labels"][row, length - len(cont) : length] = cont
        rows["segments"][row, :length] = 1
    return rows


def measure(model, tokenizer, windows: list[Window], kinds: list[str], rate: float, seed: int = 0) -> dict[str, dict]:
    """Per kind: mean continuation loss clean and perturbed, its relative increase, the share of
    continuation positions whose top-1 prediction changed, and one example pair of contexts."""
    perturbed = {kind: [perturb(w.context, kind, rate, np.random.default_rng([seed, i, list(KINDS).index(kind)]))
                        for i, w in enumerate(windows)] for kind in kinds}
    contexts = [w.context for w in windows] + [c for kind in kinds for c in perturbed[kind]]
    continuations = [w.continuation for w in windows] * (1 + len(kinds))
    room = _positions(model) - 1 - max(map(len, continuations))
    losses, top1 = row_scores(model, _rows(tokenizer, contexts, continuations, room))
    scored = top1 >= 0
    row_loss = np.nanmean(losses, axis=1)
    predictions = [top1[row][scored[row]] for row in range(len(contexts))]
    n = len(windows)
    clean_loss = float(row_loss[:n].mean())
    out = {}
    for k, kind in enumerate(kinds, start=1):
        loss = float(row_loss[k * n : (k + 1) * n].mean())
        changed = sum(int((predictions[i] != predictions[k * n + i]).sum()) for i in range(n))
        shown = next((i for i, w in enumerate(windows) if perturbed[kind][i] != w.context), 0)  # a short text may be untouched
        out[kind] = {"loss_clean": clean_loss, "loss_perturbed": loss, "loss_increase": _relative(loss, clean_loss),
                     "changed_top1": changed / sum(len(w.continuation) for w in windows),
                     "example": {"clean": windows[shown].context[:EXAMPLE_CHARS], "perturbed": perturbed[kind][shown][:EXAMPLE_CHARS]}}
    return out


def _relative(perturbed: float, clean: float) -> float:
    if clean > 0:
        return perturbed / clean - 1
    return 0.0 if perturbed <= clean else float("inf")


def robustness_gate(spec: RobustnessGate, model, tokenizer, texts: list[str], warn_margin: float, seed: int = 0) -> GateResult:
    """`texts`: held-out documents as text; the first `spec.texts` long enough to cut are measured."""
    context_tokens, continuation_tokens = token_budget(model)
    cut = (cut_window(tokenizer, text, context_tokens, continuation_tokens) for text in texts)
    windows = list(islice(filter(None, cut), spec.texts))
    if not windows:
        return skipped("robustness", f"no held-out document of at least {4 * MIN_CONTINUATION_TOKENS} tokens")
    kinds = list(dict.fromkeys(spec.perturbations))
    per_kind = measure(model, tokenizer, windows, kinds, spec.rate, seed)
    increase = float(np.mean([m["loss_increase"] for m in per_kind.values()]))
    changed = float(np.mean([m["changed_top1"] for m in per_kind.values()]))
    worst = max(kinds, key=lambda kind: per_kind[kind]["loss_increase"])
    statuses = [judge(increase, spec.max_loss_increase, warn_margin), judge(changed, spec.max_changed_top1, warn_margin)]
    status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    summary = (f"perturbed contexts ({', '.join(kinds)} at {spec.rate:g}) raise the continuation loss {increase:+.1%} "
               f"(limit +{spec.max_loss_increase:.0%}) and change {changed:.1%} of greedy predictions (limit {spec.max_changed_top1:.0%}); "
               f"worst {worst} {per_kind[worst]['loss_increase']:+.1%}, {per_kind[worst]['changed_top1']:.1%} changed; "
               f"{len(windows)} documents")
    evidence = {"documents": len(windows), "rate": spec.rate, "context_tokens": context_tokens,
                "continuation_tokens": continuation_tokens, "loss_increase": increase, "changed_top1": changed, "worst": worst,
                "kinds": per_kind}
    return GateResult("robustness", status, increase, spec.max_loss_increase, summary, evidence)
