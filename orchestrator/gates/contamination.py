"""Evaluation sets the model saw in training, measured as GPT-3 and PaLM measured it.

An evaluation item is contaminated when one of its n-grams of normalised words (lower case,
punctuation dropped) occurs in the training data; each set is judged on its own (a contaminated
benchmark is not diluted by clean ones), and the gate's value is the worst set's share. Words, not tokens: the verdict is the same
whichever tokenizer the run used. n is 13, lowered for a set of short items to the 5th
percentile of its items' lengths, but never below 8 (GPT-3, appendix C); items shorter than n
words cannot be tested and are counted as such. The training data is read back from the run's
token files document by document, so memory holds the evaluation n-grams, not the corpus.

The run's own validation split is not an evaluation set here: it is a random sample of the same
corpus, so its overlap with training measures the corpus's self-similarity, not contamination.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from orchestrator.data.ngrams import MIN_NGRAM, EvaluationSet, ngram_hashes, set_ngram, word_ids
from orchestrator.shared.data.shards import TokenShards
from orchestrator.gates.result import GateResult, judge, skipped
from orchestrator.gates.spec import ContaminationGate

def decoded_texts(tokens: TokenShards, tokenizer, max_tokens: int = 1 << 16) -> Iterator[str]:
    """A split's token shards as text, a document (or a piece of at most `max_tokens`) at a time."""
    for piece in tokens.documents(max_tokens):
        yield tokenizer.decode(np.asarray(piece).tolist(), skip_special_tokens=True)


def contaminated(sets: list[EvaluationSet], training: Iterable[str], ngram: int) -> list[dict]:
    """For each set: its n, how many items were tested, and which of them share an n-gram with training."""
    plans = []
    for eval_set in sets:
        n = set_ngram(eval_set.items, ngram)
        plans.append((eval_set, n, [ngram_hashes(word_ids(item), n) for item in eval_set.items]))
    wanted = {n: np.unique(np.concatenate([np.zeros(0, np.uint64), *(h for _, m, hashes in plans if m == n for h in hashes)])) for _, n, _ in plans}
    found: dict[int, set[int]] = {n: set() for n in wanted}
    for text in training:
        ids = word_ids(text)
        for n, needles in wanted.items():
            hashes = ngram_hashes(ids, n)
            found[n].update(hashes[np.isin(hashes, needles)].tolist())
    results = []
    for eval_set, n, hashes in plans:
        tested = [i for i, h in enumerate(hashes) if len(h)]
        dirty = [i for i in tested if not found[n].isdisjoint(hashes[i].tolist())]
        results.append({"set": eval_set.name, "ngram": n, "items": len(eval_set.items), "tested": len(tested), "contaminated": len(dirty),
                        "examples": [eval_set.items[i][:160] for i in dirty[:3]]})
    return results


def contamination_gate(spec: ContaminationGate, sets: list[EvaluationSet], training: Iterable[str], warn_margin: float) -> GateResult:
    sets = [s for s in sets if s.items]
    if not sets:
        return skipped("contamination", "no evaluation sets (downstream tasks, bias pairs, gates.contamination.eval_files)")
    rows = contaminated(sets, training, spec.ngram)
    per_set = [row for row in rows if row["tested"]]
    if not per_set:
        return skipped("contamination", f"no evaluation item has {MIN_NGRAM} or more words to test")
    for row in per_set:
        row["share"] = row["contaminated"] / row["tested"]
    worst = max(per_set, key=lambda row: row["share"])
    dirty, tested = sum(r["contaminated"] for r in per_set), sum(r["tested"] for r in per_set)
    summary = (f"{worst['set']}: {worst['contaminated']} of {worst['tested']} items ({worst['share']:.1%}) share a word "
               f"{worst['ngram']}-gram with the training data (limit {spec.max_contaminated:.0%} per set); "
               f"{dirty} of {tested} items over {len(per_set)} set(s)")
    return GateResult("contamination", judge(worst["share"], spec.max_contaminated, warn_margin), worst["share"], spec.max_contaminated,
                      summary, {"sets": rows})
