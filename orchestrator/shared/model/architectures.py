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


def _token_table(s: Sizes) -> int:
    """The input embedding, unless the output projection shares it (then it is the lm head's matmul weight too)."""
    return 0 if s.tie_embeddings else s.vocab_size * s.hidden_size


@dataclass(frozen=True)
class Architecture:
    model_type: str
    to_hf_config: Callable[[Sizes], dict]
    count_params: Callable[[Sizes], int]
    largest_layer_params: Callable[[Sizes], int]
    linear_shapes: Callable[[Sizes], dict[str, list[tuple[int, int]]]]  # per layer: module name -> (in, out) of each
    lookup_params: Callable[[Sizes], int] = _token_table
    """Parameters only ever looked up, never multiplied: no training FLOPs (`orchestrator.plan.estimate`)."""

    @property
    def linear_modules(self) -> tuple[str, ...]:
        """The names LoRA can target."""
        return tuple(self.linear_shapes(_UNIT))

    def lora_params(self, sizes: Sizes, targets: list[str], rank: int) -> int:
        """Trainable parameters of LoRA adapters: rank x (in + out) for each targeted linear of each layer."""
        shapes = self.linear_shapes(sizes)
        return sizes.num_layers * sum(rank * (i + o) for name in targets for i, o in shapes.get(name, []))

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


def _gpt2_lookups(s: Sizes) -> int:
    return _token_table(s) + s.max_position_embeddings * s.hidden_size  # and its learned position table


def _largest_layer(s: Sizes) -> int:
    """The biggest single parameter tensor: ZeRO-3 must gather it whole on one device."""
    return max(s.vocab_size * s.hidden_size, s.hidden_size * s.intermediate_size)


def _llama_linears(s: Sizes) -> dict[str, list[tuple[int, int]]]:
    h, kv, i = s.hidden_size, s.num_kv_heads * s.head_dim, s.intermediate_size
    return {"q_proj": [(h, h)], "k_proj": [(h, kv)], "v_proj": [(h, kv)], "o_proj": [(h, h)],
            "gate_proj": [(h, i)], "up_proj": [(h, i)], "down_proj": [(i, h)]}


def _gpt2_linears(s: Sizes) -> dict[str, list[tuple[int, int]]]:
    h, i = s.hidden_size, s.intermediate_size
    return {"c_attn": [(h, 3 * h)], "c_proj": [(h, h), (i, h)], "c_fc": [(h, i)]}  # c_proj: attention's and the MLP's


# Field names stand in for values, so that `sizes_of` can read each architecture's own config keys.
_PROBE = Sizes(*(name for name in Sizes.__dataclass_fields__))  # type: ignore[arg-type]
_UNIT = Sizes(1, 1, 1, 1, 1, 1, 1, True)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", _llama_config, _llama_params, _largest_layer, _llama_linears),
    "mistral": Architecture("mistral", _llama_config, _llama_params, _largest_layer, _llama_linears),
    "gpt2": Architecture("gpt2", _gpt2_config, _gpt2_params, _largest_layer, _gpt2_linears, _gpt2_lookups),
}


def lookup_params(model_type: str, sizes: Sizes) -> int:
    """`Architecture.lookup_params` for a reader holding only a record's model type. An architecture
    counted on the meta device (`measured`) has the default: its token table alone (a learned position
    table it might have counts as a matmul, a fraction of a percent of its FLOPs)."""
    architecture = ARCHITECTURES.get(model_type)
    return architecture.lookup_params(sizes) if architecture else _token_table(sizes)
