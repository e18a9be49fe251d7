"""What the gates ask of a model: losses of token rows and texts, and continuations."""

from __future__ import annotations

import numpy as np

from orchestrator.data.instruct import IGNORE
from orchestrator.shared.model.inputs import Rows, count, model_inputs, take


def row_losses(model, rows: Rows, batch_size: int = 16) -> np.ndarray:
    """Mean next-token loss of each row, over the tokens that are targets: every token of text rows,
    the responses of instruction rows (their prompts and padding carry no loss, as in training)."""
    out = []
    for start in range(0, count(rows), batch_size):
        losses, targets, _ = _score_batch(model, take(rows, start, start + batch_size))
        out.append(losses.sum(axis=1) / np.maximum((targets != IGNORE).sum(axis=1), 1))
    return np.concatenate(out) if out else np.zeros(0)


def row_scores(model, rows: Rows, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """At every target position of each row: the next-token loss and the greedy (top-1) prediction,
    arrays of shape (rows, length - 1); positions that are no target (prompts, padding) hold NaN and -1."""
    losses, predictions = [], []
    for start in range(0, count(rows), batch_size):
        loss, targets, top1 = _score_batch(model, take(rows, start, start + batch_size))
        losses.append(np.where(targets != IGNORE, loss, np.nan))
        predictions.append(np.where(targets != IGNORE, top1, -1))
    if not losses:
        return np.zeros((0, 0)), np.zeros((0, 0), dtype=np.int64)
    return np.concatenate(losses), np.concatenate(predictions)


def _score_batch(model, rows: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position of a batch of rows: loss of the next token (0 where it is no target), the target
    (IGNORE where none) and the model's top-1 prediction, in float32 without gradients."""
    import torch

    with torch.no_grad():
        inputs = model_inputs(rows, "cpu", torch.float32)
        targets = inputs.pop("labels")[:, 1:]
        logits = model(**inputs).logits[:, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=IGNORE)
        return losses.numpy(), targets.numpy(), logits.argmax(dim=-1).numpy()


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


def continue_rows(model, prefixes: list[list[int]], new_tokens: int, sample: bool = False, seed: int = 0, eos: int | None = None) -> list[list[int]]:
    """Greedy (or seeded top-40 sampled, as Carlini et al. sample) continuations of prefixes of one
    length, generated as one batch; the new ids of each, cut at the first end of text."""
    import torch

    assert len({len(p) for p in prefixes}) <= 1, "prefixes of one length: a batch without padding"
    if not prefixes:
        return []
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            torch.as_tensor(prefixes, dtype=torch.long), attention_mask=torch.ones(len(prefixes), len(prefixes[0]), dtype=torch.long),
            max_new_tokens=new_tokens, do_sample=sample, top_k=40 if sample else None, pad_token_id=eos, eos_token_id=eos,
        )
    rows = out[:, len(prefixes[0]):].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def _ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.eos_token_id, *ids]  # scored as the start of a document
