"""What the gates ask of a model: losses of token rows and texts, and continuations."""

from __future__ import annotations

import numpy as np

from orchestrator.data.instruct import IGNORE
from orchestrator.model.inputs import Rows, count, model_inputs, take


def row_losses(model, rows: Rows, batch_size: int = 16) -> np.ndarray:
    """Mean next-token loss of each row, over the tokens that are targets: every token of text rows,
    the responses of instruction rows (their prompts and padding carry no loss, as in training)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, count(rows), batch_size):
            inputs = model_inputs(take(rows, start, start + batch_size), "cpu", torch.float32)
            targets = inputs.pop("labels")[:, 1:]
            logits = model(**inputs).logits[:, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=IGNORE)
            counted = (targets != IGNORE).sum(dim=1).clamp(min=1)
            out.append((losses.sum(dim=1) / counted).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def text_losses(model, tokenizer, texts: list[str]) -> np.ndarray:
    """Mean next-token loss of each text, every text scored alone (no padding effects)."""
    return np.array([row_losses(model, np.array([_ids(tokenizer, text)]))[0] for text in texts])


def batched_text_losses(model, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """As `text_losses` for texts that tokenize to the same length (canary candidates), batched."""
    encoded = [_ids(tokenizer, text) for text in texts]
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    losses = np.zeros(len(texts))
    for indices in by_length.values():
        losses[indices] = row_losses(model, np.array([encoded[i] for i in indices]), batch_size)
    return losses


def continue_ids(model, prefix: list[int], new_tokens: int, sample: bool = False, seed: int = 0, eos: int | None = None) -> list[int]:
    """Greedy (or seeded sampled) continuation of `prefix`, the new ids only."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            torch.as_tensor([prefix], dtype=torch.long), max_new_tokens=new_tokens, do_sample=sample, top_k=50 if sample else None,
            pad_token_id=eos, eos_token_id=eos,
        )
    return out[0, len(prefix):].tolist()


def _ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.eos_token_id, *ids]  # scored as the start of a document
