"""Build the `transformers` model a recipe describes. Imports torch; called only inside ranks and exports."""

from __future__ import annotations

import importlib
import warnings
from contextlib import nullcontext

from orchestrator.shared.model.architectures import ARCHITECTURES, Sizes
from orchestrator.model.spec import ModelSpec


def _config(spec: ModelSpec, sizes: Sizes):
    from transformers import AutoConfig

    if spec.path is not None:
        return AutoConfig.from_pretrained(str(spec.path), trust_remote_code=False)
    arch = ARCHITECTURES[spec.arch]
    return AutoConfig.for_model(arch.model_type, **arch.to_hf_config(sizes))


def import_model_code(spec: ModelSpec, sizes: Sizes) -> None:
    """Import the model's transformers class (and peft, for LoRA) ahead of `build_model`, so that
    the memory a rank measures while building is the model's, not a hundred MB of code."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    MODEL_FOR_CAUSAL_LM_MAPPING[type(_config(spec, sizes))]
    if spec.lora is not None:
        importlib.import_module("peft")


def build_model(spec: ModelSpec, sizes: Sizes, dtype: str = "float32", device: str | None = "cpu",
                activation_checkpointing: bool = False):
    """Random init from sizes, or the base model's weights, created in `dtype` directly on `device`
    (a whole replica in fp32 on the host first, then cast and moved, would need several times the
    memory); wrapped with LoRA adapters when asked (then only the adapters require gradients).

    `device=None` leaves placement to DeepSpeed: under ZeRO-3 the engine keeps transformers'
    `HfDeepSpeedConfig` alive around this call, and transformers then constructs and loads inside
    `deepspeed.zero.Init`, so each rank only ever holds its partition plus one gathered layer."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    if spec.path is not None:
        logging.disable_progress_bar()  # a "Loading weights" bar per process, in logs and gate output that are not terminals
        placement = {} if device is None else {"device_map": {"": device}}
        model = AutoModelForCausalLM.from_pretrained(str(spec.path), dtype=getattr(torch, dtype), trust_remote_code=False, **placement)
    else:
        with nullcontext() if device is None else torch.device(device):
            model = AutoModelForCausalLM.from_config(_config(spec, sizes), dtype=getattr(torch, dtype))
    if activation_checkpointing:
        # Non-reentrant: gradients reach LoRA adapters and ZeRO-3's hooks without an input that requires grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                        task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft asks for `is_gradient_checkpointing`, which transformers 5 deprecates in favour of a name peft does not know yet
        warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)
