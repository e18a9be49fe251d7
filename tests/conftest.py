"""Shared fixtures: a persistent data cache for the whole session, the local Slurm cluster, a check
that the session leaves no process running, a small base model and the demo's trained run. Plain
helpers (paths, plans, driving `orch`) are in tests/helpers/ and imported from there."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import left_running, naming, session_cluster
from tests.helpers.processes import orch
from tests.helpers.project import ROOT, SHORT_RUN


@pytest.fixture(scope="session", autouse=True)
def data_cache() -> Path:
    """Token files are prepared once per machine and shared by every test that trains."""
    cache = ROOT / ".cache" / "tests"
    os.environ["ORCH_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running(tmp_path_factory) -> Iterator[None]:
    """Fails the session when a process whose command line names its temporary directory (a run, a
    Slurm job's steps) outlives it: the tests stop what they start. Torn down after every other
    session fixture (it is set up first), so after the cluster's jobs are cancelled."""
    marker = f"{tmp_path_factory.getbasetemp()}/"
    yield
    left = left_running(naming(marker))
    assert not left, f"processes the tests started are still running: {left}"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[bool]:
    """The local Slurm cluster for the integration tests (`slurm/dev-cluster.sh up`), whether this
    session started it. One started here is stopped when the session ends, and then no daemon it
    started may still run; one that was up before is left alone (tests/helpers/cluster.py)."""
    with session_cluster(ROOT / "slurm" / "dev-cluster.sh") as started:
        yield started


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A small Llama saved with `save_pretrained`, with a byte-level BPE tokenizer: a base model for
    planning and validating fine-tuning recipes without training one first."""
    import sysconfig

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-base")
    text = [p.read_text(errors="replace") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.save_pretrained(str(out))
    import torch

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def trained_once(tmp_path_factory) -> Callable[..., Path]:
    """The tiny recipe trained with the given overrides, once a session for each set asked for: the
    tests that compare a killed, faulted or exported run with the same run trained without a fault
    share one."""
    runs: dict[tuple[str, ...], Path] = {}

    def trained(*overrides: str) -> Path:
        if overrides not in runs:
            run_dir = tmp_path_factory.mktemp("trained") / "run"
            result = orch("run", "recipes/tiny-pretrain.yaml", *overrides, "--run-dir", str(run_dir))
            assert result.returncode == 0, result.stdout + result.stderr
            runs[overrides] = run_dir
        return runs[overrides]

    return trained


@pytest.fixture(scope="session")
def uninterrupted(trained_once) -> Callable[..., Path]:
    """`SHORT_RUN` trained without a fault, at a ZeRO stage (the tiny recipe's own 2 by default)."""
    return lambda stage=2: trained_once(*SHORT_RUN, f"distributed.zero_stage={stage}")


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """`make demo`'s run (the default recipe as it ships, `orch run`), then `orch gate` and `orch
    release` on it: the flow the README gives newcomers, which must pass out of the box; its release
    is also the base the fine-tuning tests start from. Holds `run/` and `release/`."""
    work = tmp_path_factory.mktemp("demo")
    for args in (["run", "--run-dir", str(work / "run")], ["gate", str(work / "run")],
                 ["release", str(work / "run"), "--to", str(work / "release")]):
        result = orch(*args)
        assert result.returncode == 0, f"orch {args[0]} exited {result.returncode}: {result.stdout}{result.stderr}"
    return work
