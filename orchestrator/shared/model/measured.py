"""Counting a base model whose architecture the analytic counters do not know.

Any `model_type` transformers knows is built on the meta device (accelerate's `init_empty_weights`):
its parameters have shapes and no storage, so the count is exact, takes seconds and no memory.
It imports torch, transformers and accelerate, so the planner calls it only for such models and
planning a known architecture stays free of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.shared.model.architectures import Architecture, Sizes

FIRST_LAYER = re.compile(r"\.0\.")
"""A module of the first repeated block (`model.layers.0.self_attn.q_proj`, `transformer.h.0.mlp`)."""


def known_to_transformers(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def measure_architecture(path: Path) -> tuple[Architecture, Sizes]:
    """The architecture as counted on the meta device, and its sizes as the config states them."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    params = list(model.parameters())  # a tied output projection is the embedding's parameter, counted once
    num_params, largest = sum(p.numel() for p in params), max(p.numel() for p in params)
    shapes: dict[str, list[tuple[int, int]]] = {}
    for name, module in model.named_modules():
        if FIRST_LAYER.search(name) and isinstance(module, (torch.nn.Linear, Conv1D)):
            fan_in, fan_out = (module.in_features, module.out_features) if isinstance(module, torch.nn.Linear) else tuple(module.weight.shape)
            shapes.setdefault(name.rsplit(".", 1)[-1], []).append((fan_in, fan_out))
    architecture = Architecture(
        model_type=config.model_type,
        to_hf_config=lambda sizes: {},  # only ever loaded from its own config, never built from sizes
        count_params=lambda sizes: num_params,
        largest_layer_params=lambda sizes: largest,
        linear_shapes=lambda sizes: shapes,
    )
    return architecture, _sizes(config)


def _sizes(config) -> Sizes:
    """Sizes through transformers' standard attribute names, which every config maps onto its own."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    return Sizes(
        vocab_size=config.vocab_size,
        hidden_size=hidden,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        intermediate_size=getattr(config, "intermediate_size", None) or 4 * hidden,
        max_position_embeddings=getattr(config, "max_position_embeddings", None) or 0,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
    )
