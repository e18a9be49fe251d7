"""Extraction probes on a small real model: the training prefixes the memorisation and content gates
share, batched generation that matches one-at-a-time generation, and every probe the content gate scans."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.gates.extraction import probe_generations, training_prefixes
from orchestrator.gates.memorisation import memorisation_gate
from orchestrator.gates.scoring import continue_rows
from orchestrator.gates.spec import ContentGate, MemorisationGate


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval(), AutoTokenizer.from_pretrained(str(tiny_base))


def test_prefixes_come_from_the_training_tokens_with_their_true_continuation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    train = np.random.default_rng(0).integers(0, len(tokenizer) - 1, size=5000).astype(np.uint16)
    spec = MemorisationGate(prefixes=6, prefix_tokens=8, continuation_tokens=12)
    prefixes = training_prefixes(model, train, spec, tokenizer.eos_token_id)
    assert len(prefixes) == 6 and prefixes == training_prefixes(model, train, spec, tokenizer.eos_token_id)
    for p in prefixes:
        assert p.prefix == train[p.offset : p.offset + 8].tolist() and p.truth == train[p.offset + 8 : p.offset + 20].tolist()
        assert p.greedy == continue_rows(model, [p.prefix], 12, eos=tokenizer.eos_token_id)[0]  # the batch changes nothing
    # A model "continuing" with the truth itself is a full verbatim reproduction.
    parroted = [type(p)(p.offset, p.prefix, p.truth, p.truth) for p in prefixes]
    result = memorisation_gate(MemorisationGate(max_verbatim_tokens=10), model, tokenizer, [], parroted, 0.05)
    assert result.status == "fail" and result.evidence["longest_verbatim_tokens"] == 12


def test_the_content_probes_are_training_prefixes_unconditioned_samples_and_prompts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    train = np.random.default_rng(1).integers(0, len(tokenizer) - 1, size=3000).astype(np.uint16)
    prefixes = training_prefixes(model, train, MemorisationGate(prefixes=4, prefix_tokens=8, continuation_tokens=8), tokenizer.eos_token_id)
    spec = ContentGate(prompts=["My email is", "Call me at"], samples_per_prompt=3, samples_per_prefix=2, unconditioned=5, max_new_tokens=6)
    probes = probe_generations(model, tokenizer, prefixes, spec)
    sources = [p["source"] for p in probes]
    assert sum("(greedy)" in s for s in sources) == 4 and sum("(sample)" in s for s in sources) == 8
    assert sources.count("unconditioned") == 5 and sources.count("prompt 'My email is'") == 3
    assert len(probes) == 4 + 8 + 5 + 2 * 3
    assert probes == probe_generations(model, tokenizer, prefixes, spec)  # seeded: the same probes every time
    samples = [p["completion"] for p in probes if p["source"] == "unconditioned"]
    assert len(set(samples)) > 1  # one greedy text, then samples
