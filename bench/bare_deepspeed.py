"""A bare, hand-written DeepSpeed training loop: the baseline the orchestrator is measured against.

It trains the same model, with the same DeepSpeed JSON, micro batch, sequence length and token
data as an `orch run` that already ran, read from that run's directory through the project's records
(plan.json with its DeepSpeed JSON, recipe.yaml, data.json), and nothing else: no recipe schema, no sharded sampler, no metrics rows, no
evaluation. The prepared tokens are read with the project's own reader (`PreparedData`,
`open_split`): their format is the data pipeline's, not this loop's. Differences kept on purpose,
because they are not throughput: no lr scheduler (the orchestrator passes a LambdaLR), and data
read sequentially (each rank its own slice of each global batch) instead of through the seeded
permutation. Rank 0 writes the wall time of every optimizer step to --out.

`bench/throughput.py` starts it; by hand, after an `orch run ... --run-dir RUN`:

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TORCH_EXTENSIONS_DIR=.venv/torch-extensions PATH=.venv/bin:$PATH \\
        python -m torch.distributed.run --nproc_per_node 2 --master_port 29511 \\
        bench/bare_deepspeed.py --run-dir RUN --steps 40 --out bare.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: F401  puts the checkout on sys.path
from orchestrator.shared.data.stream import MixedSequences, open_split
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import BatchRecord, PlanRecord, read_data, read_plan, read_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="directory of a finished `orch run`")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the per-step times (rank 0)")
    args = parser.parse_args()

    run = RunDir(args.run_dir)
    plan = read_plan(run)
    data = read_data(run).prepared
    seed = read_recipe(run).train.seed
    if plan.model.arch != "llama" or data.kind != "text":
        raise SystemExit(f"the bare loop trains a Llama on text; this run is {plan.model.arch} on {data.kind} data")

    # Every source's windows in turn; opened before the engine is built, so a run whose data is gone fails at once.
    sequences = open_split(data, "train", plan.batch.seq_len)
    engine, model, device = build_engine(plan, seed)
    step_s, losses = train(engine, device, plan.batch, sequences, args.steps)
    if torch.distributed.get_rank() == 0:
        result = {
            "step_s": step_s,
            "loss": losses,
            "tokens_per_step": plan.batch.tokens_per_step,
            "world_size": torch.distributed.get_world_size(),
            "attn_implementation": model.config._attn_implementation,
            "lr_scheduler": None,
        }
        args.out.write_text(json.dumps(result, indent=1))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def build_engine(plan: PlanRecord, seed: int):
    """The Llama model of the run's sizes under DeepSpeed (with the run's DeepSpeed JSON, as the plan
    holds it), as a user would write it by hand."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    comm_backend = plan.topology.comm_backend
    if comm_backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend=comm_backend)
    torch.manual_seed(seed)
    sizes = plan.model.sizes
    config = LlamaConfig(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_kv_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        tie_word_embeddings=sizes.tie_embeddings,
    )
    model = LlamaForCausalLM(config)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=plan.backend_config)
    return engine, model, get_accelerator().current_device_name()


def train(engine, device, batch: BatchRecord, sequences: MixedSequences, steps: int) -> tuple[list[float], list[float]]:
    """`steps` optimizer steps over sequential data; the wall time and last loss of each."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    micro, accumulation = batch.micro_batch_size, batch.gradient_accumulation_steps

    def micro_batch(index: int) -> torch.Tensor:
        """Micro-batch `index` of this rank: `micro` consecutive sequences, ranks side by side."""
        first = (index * world + rank) * micro
        ids = sequences.rows(np.arange(first, first + micro) % len(sequences))
        return torch.from_numpy(ids).to(device)

    step_s, losses = [], []
    for step in range(steps):
        tic = time.perf_counter()
        for k in range(accumulation):
            ids = micro_batch(step * accumulation + k)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
        losses.append(float(loss.detach()))
        step_s.append(time.perf_counter() - tic)
    return step_s, losses


if __name__ == "__main__":
    main()
