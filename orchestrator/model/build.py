"""Build the `transformers` model a recipe describes. Imports torch; called only inside ranks."""

from __future__ import annotations

from orchestrator.model.architectures import ARCHITECTURES, Sizes
from orchestrator.model.spec import ModelSpec


def build_model(spec: ModelSpec, sizes: Sizes):
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.path is not None:
        return AutoModelForCausalLM.from_pretrained(str(spec.path))
    arch = ARCHITECTURES[spec.arch]
    config = AutoConfig.for_model(arch.model_type, **arch.to_hf_config(sizes))
    return AutoModelForCausalLM.from_config(config)
