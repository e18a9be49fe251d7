"""Rows of the data layer into the keyword arguments a `transformers` causal LM takes.

Text rows are token ids whose labels are themselves. Instruction rows carry labels (-100 over
prompts and padding) and segment ids; their attention mask is block-diagonal and causal (a token
sees earlier tokens of its own example only) and positions restart at each example, so packed
examples never see each other.
"""

from __future__ import annotations

import numpy as np

Rows = np.ndarray | dict[str, np.ndarray]


def take(rows: Rows, start: int, stop: int) -> Rows:
    if isinstance(rows, dict):
        return {name: array[start:stop] for name, array in rows.items()}
    return rows[start:stop]


def count(rows: Rows) -> int:
    return len(rows["input_ids"]) if isinstance(rows, dict) else len(rows)


def model_inputs(rows: Rows, device, dtype) -> dict:
    import torch

    if not isinstance(rows, dict):
        ids = torch.from_numpy(np.asarray(rows)).to(device)
        return {"input_ids": ids, "labels": ids}
    ids = torch.tensor(np.asarray(rows["input_ids"]), device=device)
    segments = torch.tensor(np.asarray(rows["segments"], dtype=np.int64), device=device)
    length = ids.shape[1]
    position = torch.arange(length, device=device)
    same = segments[:, :, None] == segments[:, None, :]
    allowed = same & (position[None, None, :] <= position[None, :, None]) & (segments[:, :, None] > 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=device)[None]  # padding attends to itself: no empty softmax rows
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    starts = torch.cat([torch.ones_like(segments[:, :1], dtype=torch.bool), segments[:, 1:] != segments[:, :-1]], dim=1)
    start_index = torch.cummax(torch.where(starts, position[None].expand_as(segments), torch.zeros_like(segments)), dim=1).values
    return {"input_ids": ids, "labels": torch.tensor(np.asarray(rows["labels"]), device=device), "attention_mask": mask,
            "position_ids": position[None] - start_index}
