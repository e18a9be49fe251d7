"""Pretrained directories that would run code of their own when loaded.

A Hugging Face model or tokenizer directory may name Python classes of its own (`auto_map` in
`config.json` or `tokenizer_config.json`): `from_pretrained` then imports them from the
directory, after asking "Do you wish to run the custom code?" on a terminal (and failing with a
traceback without one). A recipe is data, so such a directory is refused at `orch validate`, one
line naming the field, and every `from_pretrained` passes `trust_remote_code=False`, so one that
reaches a load anyway (edited after validate) is loaded with transformers' own classes or fails,
never runs its code and never asks.
"""

from __future__ import annotations

import json
from pathlib import Path

CODE_CONFIGS = ("config.json", "tokenizer_config.json")
"""The files whose `auto_map` makes AutoConfig, AutoModelForCausalLM and AutoTokenizer import the directory's code."""


def remote_code_problem(directory: Path) -> str | None:
    """Why `directory` cannot be loaded without running its own code; None when it can (or is not a directory)."""
    for name in CODE_CONFIGS:
        path = directory / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"{path} is not readable JSON ({type(exc).__name__}): save it again with save_pretrained"
        if isinstance(config, dict) and "auto_map" in config:
            return (f"{path} names code of its own (auto_map), which orch does not run: "
                    "use a directory that transformers' own classes load (save_pretrained of a built-in model type)")
    return None


def remote_code_problems(recipe) -> list[tuple[str, str]]:
    """(field, why) for each pretrained directory of the recipe that would run its own code."""
    directories = {
        "model.path": recipe.model.path,
        "data.tokenizer.path": recipe.data.tokenizer.path,
        "gates.quality.baseline": recipe.gates.quality.baseline,
        "gates.evaluation.baseline": recipe.gates.evaluation.baseline,
    }
    return [(field, why) for field, directory in directories.items()
            if directory is not None and (why := remote_code_problem(Path(directory)))]
