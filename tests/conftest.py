"""Shared fixtures: a persistent data cache for the whole session, an env snapshot for planning, the
local Slurm cluster, a check that the session leaves no process running, and a helper that drives the
real `orch` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.env import EnvSnapshot, GpuInfo
from tests.helpers.cluster import left_running, naming, session_cluster

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
TINY = RECIPES / "tiny-pretrain.yaml"
# Small corpus and short runs keep the distributed tier to a few minutes on 2 cores.
FAST = ["data.max_bytes=1500000", "train.schedule.warmup_steps=2", "train.eval_interval=1000"]
# For runs gated to test the plumbing around the gates (dashboards, backends), not the gates' power:
# every gate runs, on fewer probes.
LIGHT_GATES = ["gates.memorisation.prefixes=4", "gates.content.unconditioned=4", "gates.content.samples_per_prompt=1",
               "gates.robustness.texts=8", "gates.evaluation.limit=30", "gates.quality.eval_sequences=16"]


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


def make_env(
    tmp_path: Path, gpus: tuple[GpuInfo, ...] = (), cpu_count: int = 2, cpu_fp16: bool = False,
    libraries: frozenset[str] = frozenset({"deepspeed", "horovod"}),
) -> EnvSnapshot:
    return EnvSnapshot(
        hostname="testhost",
        cpu_count=cpu_count,
        memory_bytes=24 * 2**30,
        python="/usr/bin/python3",
        cwd=ROOT,  # the recipes name files (bias pairs, tasks) relative to the project root
        cache_dir=tmp_path / "cache",
        free_port=29999,
        gpus=gpus,
        cpu_fp16=cpu_fp16,
        cpu_matmul_flops=100e9,
        libraries=libraries,
    )


def tiny_plan_record(tmp_path: Path, **fields):
    """A real plan record of the tiny recipe, with `fields` replaced (validated again)."""
    from orchestrator.plan.planner import make_plan
    from orchestrator.recipe.loader import load_recipe

    record = make_plan(load_recipe(TINY), make_env(tmp_path)).record()
    return record.model_validate({**record.model_dump(), **fields})


def write_plan(directory: Path, /, **fields) -> None:
    """A real plan of the tiny recipe as the run directory's plan.json, with `fields` replaced."""
    from orchestrator.rundir.layout import RunDir
    from orchestrator.rundir.records import write_plan as write

    directory.mkdir(parents=True, exist_ok=True)
    write(RunDir(directory), tiny_plan_record(directory, **fields))


H100 = GpuInfo("NVIDIA H100 80GB HBM3", 80 * 2**30, 9.0)
V100 = GpuInfo("Tesla V100-SXM2-32GB", 32 * 2**30, 7.0)


def orch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def start_orch(*args: str) -> subprocess.Popen:
    """`orch` in the background, in its own session, for tests that signal or kill it mid-run."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )


def wait_for_rows(process: subprocess.Popen, run_dir: Path, count: int, timeout_s: float = 240) -> None:
    """Until the run has logged `count` metric rows, failing early if `process` ended first."""
    import time

    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        assert process.poll() is None, f"the run ended before step {count}"
        assert time.monotonic() < deadline, f"no step {count} within {timeout_s}s"
        time.sleep(0.05)


def kill_run(run_dir: Path) -> None:
    """SIGKILL every process of a run (CLI, node launcher, ranks): a crash at an arbitrary moment."""
    import psutil

    victims = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    for process in victims:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
