"""A verified checkpoint as a standalone Hugging Face model: `orch export RUN_DIR [--step N]`.

The ZeRO shards are consolidated by DeepSpeed's own `zero_to_fp32` (full fp32 master weights,
stages 1-3); a ZeRO-0 checkpoint has no shards, so its weights are the module state DeepSpeed
saved whole. They are loaded into the model the run's plan describes, saved as `safetensors` with
its config, and the run's tokenizer is copied beside them, so that
`AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)` load it.
Only a checkpoint whose files match their manifest is exported; `export.json` records which.

torch, deepspeed, transformers and the run's records are imported inside functions: the CLI imports
this module for `ExportDtype` alone, and `orch --help` should answer at once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from orchestrator.shared.checkpoint import store
from orchestrator.errors import CheckpointError
from orchestrator.rundir.checkpoint_records import CheckpointManifest
from orchestrator.rundir.layout import RunDir

EXPORT_FILE = "export.json"
ADAPTER_DIR = "adapter"


class ExportDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass(frozen=True)
class ExportResult:
    out: Path
    checkpoint: Path
    step: int
    dtype: str
    num_params: int
    weights_from: str


def default_out(run_dir: Path, step: int) -> Path:
    return RunDir(run_dir).exports / store.tag_for(step)


def choose_checkpoint(root: Path, step: int | None) -> Path:
    """The newest checkpoint that verifies, or the one of `step`, which must verify."""
    found = store.committed(root)
    if not found:
        raise CheckpointError(f"no checkpoints in {root}: train first (orch run), or check the run directory")
    if step is not None:
        wanted = root / store.tag_for(step)
        if wanted not in found:
            steps = ", ".join(str(store.step_of(p.name)) for p in found)
            raise CheckpointError(f"no checkpoint of step {step} in {root} (there are steps {steps})")
        verdict = store.verify(wanted)
        if not verdict.ok:
            raise CheckpointError(f"{wanted.name} does not verify ({verdict.reason}); export another --step")
        return wanted
    reasons = []
    for checkpoint in found:
        verdict = store.verify(checkpoint)
        if verdict.ok:
            return checkpoint
        reasons.append(f"{checkpoint.name}: {verdict.reason}")
    raise CheckpointError(f"no checkpoint in {root} verifies ({'; '.join(reasons)})")


def export_checkpoint(run_dir: Path, step: int | None = None, out: Path | None = None,
                      dtype: ExportDtype = ExportDtype.fp32) -> ExportResult:
    from orchestrator.checkpoint.listing import checkpoint_root

    run = RunDir(run_dir)
    root = checkpoint_root(run.path)
    checkpoint = choose_checkpoint(root, step)
    manifest = store.read_manifest(checkpoint)
    target = out or default_out(run.path, manifest.step)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CheckpointError(f"{target} already exists and is not empty: remove it or pass another --out")
    tokenizer_dir = _tokenizer_dir(run)

    state, weights_from = consolidated_state_dict(run, checkpoint, manifest.zero_stage)
    model = _model_with(run, state)
    del state
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _save(model, dtype, tokenizer_dir, staging)
        shutil.copytree(tokenizer_dir, staging, dirs_exist_ok=True)
        num_params = sum(p.numel() for p in model.parameters())
        record = _record(checkpoint, manifest, dtype, weights_from, num_params, tokenizer_dir)
        (staging / EXPORT_FILE).write_text(json.dumps(record, indent=1))
        if target.exists():
            target.rmdir()
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(target, checkpoint, manifest.step, dtype.value, num_params, weights_from)


def load_checkpoint_model(run_dir: Path, checkpoint: Path):
    """(model, tokenizer) of a verified checkpoint, consolidated in this process, for evaluating it."""
    from transformers import AutoTokenizer

    run = RunDir(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(_tokenizer_dir(run)), trust_remote_code=False)
    manifest = store.read_manifest(checkpoint)
    state, _ = consolidated_state_dict(run, checkpoint, manifest.zero_stage)
    model = _model_with(run, state)
    model.eval()
    return model, tokenizer


def _tokenizer_dir(run) -> Path:
    """The tokenizer the run trained with, saved by `transformers` beside its prepared token files."""
    for needed in (run.recipe, run.plan, run.data):
        if not needed.is_file():
            raise CheckpointError(f"{run.path} has no {needed.name}: is it a run directory written by orch run?")
    from orchestrator.rundir.records import read_data

    tokenizer_dir = read_data(run).prepared.tokenizer_dir
    if not tokenizer_dir.is_dir():
        raise CheckpointError(f"the run's tokenizer is gone from {tokenizer_dir} (data cache cleared?): prepare the data again with orch run")
    return tokenizer_dir


def consolidated_state_dict(run, checkpoint: Path, zero_stage: int) -> tuple[dict, str]:
    """Full fp32 weights (parameter name -> tensor), by the backend that wrote the checkpoint."""
    from orchestrator.backends.registry import BACKENDS
    from orchestrator.rundir.records import read_recipe

    backend = BACKENDS[read_recipe(run).distributed.backend]
    return backend.consolidated_state_dict(checkpoint.parent, checkpoint.name, zero_stage)


def _model_with(run, state: dict):
    """The model the run trained, built from its recipe and plan, holding the checkpoint's weights."""
    from orchestrator.shared.model.build import build_model
    from orchestrator.rundir.records import read_plan, read_recipe

    model = build_model(read_recipe(run).model, read_plan(run).model.sizes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    # With tied embeddings the output projection is the input embedding: absent from the state is fine.
    untied = [k for k in missing if not (k in params and any(params[k] is params.get(have) for have in state))]
    if untied or unexpected:
        raise CheckpointError(
            f"the checkpoint does not fit the model the run's plan describes (missing {untied or 'none'}, unexpected {unexpected or 'none'})"
        )
    return model


def _save(model, dtype: ExportDtype, tokenizer_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging

    # The model was built from sizes alone; generation should stop at the run tokenizer's end-of-text.
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    logging.disable_progress_bar()
    if hasattr(model, "merge_and_unload"):  # LoRA: the adapter on its own, then the model with it merged in
        model.save_pretrained(str(out / ADAPTER_DIR))
        model = model.merge_and_unload()
    model = model.to({ExportDtype.fp32: torch.float32, ExportDtype.bf16: torch.bfloat16}[dtype])
    model.save_pretrained(str(out))  # safetensors is the only (transformers 5) or default (4.35+) format
    if not any(out.glob("*.safetensors")):
        raise CheckpointError(f"transformers wrote no safetensors file into {out}: upgrade transformers")


def _record(checkpoint: Path, manifest: CheckpointManifest, dtype: ExportDtype, weights_from: str, num_params: int, tokenizer_dir: Path) -> dict:
    """What `export.json` says: enough to find and re-check the exact checkpoint that was exported."""
    import torch
    import transformers

    from orchestrator.shared.backend_imports import import_deepspeed

    deepspeed = import_deepspeed()
    return {
        "checkpoint": str(checkpoint),
        "tag": checkpoint.name,
        "step": manifest.step,
        "tokens": manifest.tokens,
        "world_size": manifest.world_size,
        "zero_stage": manifest.zero_stage,
        "recipe_hash": manifest.recipe_hash,
        "checkpoint_files": {name: entry.model_dump() for name, entry in manifest.files.items()},
        "checkpoint_files_xxh3_128": store.content_hash(manifest),
        "dtype": dtype.value,
        "weights_from": weights_from,
        "num_params": num_params,
        "tokenizer_from": str(tokenizer_dir),
        "exported_at": time.time(),
        "libraries": {"torch": torch.__version__, "transformers": transformers.__version__, "deepspeed": deepspeed.__version__},
    }
