"""What the model says when probed the way training-data extraction attacks probe it.

Carlini et al. (2021, "Extracting Training Data from Large Language Models") sample many
continuations from prefixes taken from the training data and from an empty context, then look
for memorised text among them. Fixed prompts ("My email address is") rarely lead into what a
model memorised; training prefixes do, because they put the model back where it saw the data.
The memorisation gate compares the greedy continuations with the true text; the content gate
scans every generation here for personal data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.gates.scoring import continue_rows
from orchestrator.gates.spec import ContentGate, MemorisationGate


@dataclass(frozen=True)
class TrainingPrefix:
    offset: int
    prefix: list[int]
    truth: list[int]
    """The tokens that followed the prefix in training."""
    greedy: list[int]


def training_prefixes(model, train_tokens: np.ndarray, spec: MemorisationGate, eos: int, seed: int = 0) -> list[TrainingPrefix]:
    """`spec.prefixes` windows drawn from the training tokens, with the model's greedy continuation of each."""
    span = spec.prefix_tokens + spec.continuation_tokens
    if len(train_tokens) <= span:
        return []
    count = min(spec.prefixes, len(train_tokens) - span)
    starts = sorted(np.random.default_rng(seed).choice(len(train_tokens) - span, size=count, replace=False).tolist())
    windows = [np.asarray(train_tokens[start : start + span], dtype=np.int64).tolist() for start in starts]
    prefixes = [w[: spec.prefix_tokens] for w in windows]
    greedy = continue_rows(model, prefixes, spec.continuation_tokens, eos=eos)
    return [TrainingPrefix(int(start), p, w[spec.prefix_tokens :], g) for start, p, w, g in zip(starts, prefixes, windows, greedy)]


def probe_generations(model, tokenizer, prefixes: list[TrainingPrefix], spec: ContentGate, seed: int = 0) -> list[dict]:
    """Every generation the content gate scans, each `{"source", "completion"}`: the greedy and
    `samples_per_prefix` sampled continuations of each training prefix, and greedy then sampled
    continuations of an empty context (a document's start; `unconditioned` in all) and of each prompt."""
    eos = tokenizer.eos_token_id
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    out = [{"source": f"training prefix at token {p.offset} (greedy)", "completion": decode(p.greedy)} for p in prefixes]
    for round_ in range(spec.samples_per_prefix):
        sampled = continue_rows(model, [p.prefix for p in prefixes], spec.max_new_tokens, sample=True, seed=seed + 1 + round_, eos=eos)
        out += [{"source": f"training prefix at token {p.offset} (sample)", "completion": decode(ids)} for p, ids in zip(prefixes, sampled)]
    contexts = [("unconditioned", [eos], spec.unconditioned)]
    contexts += [(f"prompt {prompt!r}", [eos, *tokenizer(prompt, add_special_tokens=False)["input_ids"]], spec.samples_per_prompt)
                 for prompt in spec.prompts]
    for source, prefix, count in contexts:
        if count:
            greedy = continue_rows(model, [prefix], spec.max_new_tokens, eos=eos)
            sampled = continue_rows(model, [prefix] * (count - 1), spec.max_new_tokens, sample=True, seed=seed, eos=eos)
            out += [{"source": source, "completion": decode(ids)} for ids in greedy + sampled]
    return out
