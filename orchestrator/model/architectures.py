"""The causal-LM architectures a recipe may name, and their size arithmetic.

Each entry maps the recipe's uniform size fields onto the Hugging Face config's own names
(GPT-2 says `n_embd` where Llama says `hidden_size`) and counts parameters analytically, so
that planning needs neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Sizes:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    tie_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class Architecture:
    model_type: str
    to_hf_config: Callable[[Sizes], dict]
    count_params: Callable[[Sizes], int]
    largest_layer_params: Callable[[Sizes], int]
    linear_modules: tuple[str, ...]  # the names LoRA can target

    def sizes_of(self, config: dict) -> Sizes:
        """The recipe's sizes back from a Hugging Face config (a base model directory's config.json)."""
        field_of = self.to_hf_config(_PROBE)  # config key -> Sizes field
        found = {field_of[key]: value for key, value in config.items() if key in field_of}
        found["num_kv_heads"] = found.get("num_kv_heads") or found["num_heads"]
        found["intermediate_size"] = found.get("intermediate_size") or 4 * found["hidden_size"]
        found.setdefault("tie_embeddings", True)
        return Sizes(**found)


def _llama_config(s: Sizes) -> dict:
    return {
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "max_position_embeddings": s.max_position_embeddings,
        "tie_word_embeddings": s.tie_embeddings,
    }


def _llama_params(s: Sizes) -> int:
    h, kv = s.hidden_size, s.num_kv_heads * s.head_dim
    attention = 2 * h * h + 2 * h * kv
    mlp = 3 * h * s.intermediate_size
    layer = attention + mlp + 2 * h
    embeddings = s.vocab_size * h * (1 if s.tie_embeddings else 2)
    return embeddings + s.num_layers * layer + h


def _gpt2_config(s: Sizes) -> dict:
    return {
        "vocab_size": s.vocab_size,
        "n_embd": s.hidden_size,
        "n_layer": s.num_layers,
        "n_head": s.num_heads,
        "n_inner": s.intermediate_size,
        "n_positions": s.max_position_embeddings,
        "tie_word_embeddings": s.tie_embeddings,
    }


def _gpt2_params(s: Sizes) -> int:
    h, inner = s.hidden_size, s.intermediate_size
    attention = (3 * h * h + 3 * h) + (h * h + h)
    mlp = (h * inner + inner) + (inner * h + h)
    layer = attention + mlp + 2 * 2 * h
    embeddings = s.vocab_size * h * (1 if s.tie_embeddings else 2) + s.max_position_embeddings * h
    return embeddings + s.num_layers * layer + 2 * h


def _largest_layer(s: Sizes) -> int:
    """The biggest single parameter tensor: ZeRO-3 must gather it whole on one device."""
    return max(s.vocab_size * s.hidden_size, s.hidden_size * s.intermediate_size)


# Field names stand in for values, so that `sizes_of` can read each architecture's own config keys.
_PROBE = Sizes(*(name for name in Sizes.__dataclass_fields__))  # type: ignore[arg-type]

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", _llama_config, _llama_params, _largest_layer, LLAMA_LINEAR),
    "mistral": Architecture("mistral", _llama_config, _llama_params, _largest_layer, LLAMA_LINEAR),
    "gpt2": Architecture("gpt2", _gpt2_config, _gpt2_params, _largest_layer, ("c_attn", "c_proj", "c_fc")),
}
