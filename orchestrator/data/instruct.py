"""Instruction data into training rows: format each example, mask the prompt, pack without crossing.

Each example becomes prompt tokens (label -100: no loss) then response tokens and end-of-text
(labelled with themselves). Rows of `seq_len` hold one example (padded) or, packed, as many whole
examples as fit; a segment id per token (0 for padding) lets the model's attention mask keep every
example to itself, and positions restart at each example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.data.spec import InstructionSpec
from orchestrator.errors import DataError

IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def read_examples(rows: list[dict], spec: InstructionSpec) -> list[Example | list[dict]]:
    """Rows as prompt/response pairs or message lists; every row without the fields is reported by number."""
    examples, bad = [], []
    for number, row in enumerate(rows, start=1):
        messages = row.get(spec.messages_field)
        if isinstance(messages, list) and messages and messages[-1].get("role") == "assistant":
            examples.append(messages)
        elif isinstance(row.get(spec.prompt_field), str) and isinstance(row.get(spec.response_field), str):
            examples.append(Example(row[spec.prompt_field], row[spec.response_field]))
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(
            f"{len(bad)} instruction row(s) have neither `{spec.prompt_field}`/`{spec.response_field}` strings nor "
            f"`{spec.messages_field}` ending with an assistant turn: rows {shown}"
        )
    return examples


def render(example: Example | list[dict], tokenizer, spec: InstructionSpec) -> tuple[str, str]:
    """(prompt text, response text): the chat template where the tokenizer has one, else the recipe's."""
    if getattr(tokenizer, "chat_template", None):
        messages = example if isinstance(example, list) else [
            {"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.response}]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        return prompt, messages[-1]["content"]
    if isinstance(example, list):
        turns = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in example[:-1])
        return spec.template.format(prompt=turns.strip()), example[-1]["content"]
    return spec.template.format(prompt=example.prompt), example.response


def tokenize(examples: list, tokenizer, spec: InstructionSpec) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example; labels are -100 over the prompt."""
    eos = tokenizer.eos_token_id
    out = []
    for example in examples:
        prompt, response = render(example, tokenizer, spec)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
        out.append((prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids))
    return out


def pack(pairs: list[tuple[list[int], list[int]]], seq_len: int, packing: bool, pad_id: int) -> dict[str, np.ndarray]:
    """Rows of `seq_len`: input_ids, labels and segments (1, 2, ... per example in the row, 0 for padding).
    An example longer than a row is cut to it (the manifest counts them)."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    current: tuple[list[int], list[int], list[int]] = ([], [], [])
    for ids, labels in pairs:
        ids, labels = ids[:seq_len], labels[:seq_len]
        if current[0] and (not packing or len(current[0]) + len(ids) > seq_len):
            rows.append(current)
            current = ([], [], [])
        segment = (max(current[2]) if current[2] else 0) + 1
        current = (current[0] + ids, current[1] + labels, current[2] + [segment] * len(ids))
    if current[0]:
        rows.append(current)
    shape = (len(rows), seq_len)
    out = {"input_ids": np.full(shape, pad_id, dtype=np.int64), "labels": np.full(shape, IGNORE, dtype=np.int64),
           "segments": np.zeros(shape, dtype=np.int16)}
    for index, (ids, labels, segments) in enumerate(rows):
        out["input_ids"][index, : len(ids)] = ids
        out["labels"][index, : len(labels)] = labels
        out["segments"][index, : len(segments)] = segments
    return out
