"""What a base model directory holds, read from its files at planning time.

A fine-tuning run starts from a local Hugging Face model directory: a release of this project,
an `orch export`, or any causal LM saved with `save_pretrained`. Its `config.json` gives the
architecture and sizes the planner needs (no torch for the architectures counted analytically;
any other causal LM transformers knows is counted on the meta device); its tokenizer files must
be there too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.shared.model.architectures import ARCHITECTURES, Architecture, Sizes
from orchestrator.rundir.layout import RELEASE_MANIFEST

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class BaseModel:
    path: Path
    arch: str
    sizes: Sizes
    architecture: Architecture


def read_base_model(path: Path) -> BaseModel:
    """The base model's architecture and sizes; ValueError with what is wrong and how to fix it."""
    config_file = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: give a release, an `orch export` or a save_pretrained directory")
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json: it is not a Hugging Face model directory")
    config = json.loads(config_file.read_text())
    kinds = config.get("architectures") or []
    if not any(kind.endswith("ForCausalLM") or kind.endswith("LMHeadModel") for kind in kinds):
        raise ValueError(f"{path} is not a causal language model (its config names {kinds or 'no architecture'})")
    model_type = config.get("model_type")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the tokenizer beside the model")
    if model_type in ARCHITECTURES:
        architecture = ARCHITECTURES[model_type]
        return BaseModel(path, model_type, architecture.sizes_of(config), architecture)
    from orchestrator.shared.model.measured import known_to_transformers, measure_architecture

    if not known_to_transformers(model_type):
        raise ValueError(f"{path}: model_type `{model_type}` is not one this version of transformers knows: upgrade transformers")
    architecture, sizes = measure_architecture(path)
    return BaseModel(path, model_type, sizes, architecture)


def release_manifest_hash(path: Path) -> str | None:
    """The sha256 of a base model's release manifest, when the base is a release of this project."""
    manifest = path / RELEASE_MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
