"""Build the `transformers` model a recipe describes. Imports torch; called only inside ranks."""

from __future__ import annotations

from orchestrator.model.architectures import ARCHITECTURES, Sizes
from orchestrator.model.spec import ModelSpec


def build_model(spec: ModelSpec, sizes: Sizes):
    """Random init from sizes, or the base model's weights; wrapped with LoRA adapters when asked
    (then only the adapters require gradients)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.path is not None:
        model = AutoModelForCausalLM.from_pretrained(str(spec.path), torch_dtype="float32")
    else:
        arch = ARCHITECTURES[spec.arch]
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch.model_type, **arch.to_hf_config(sizes)))
    if spec.lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)
