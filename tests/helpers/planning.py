"""Machines to plan for and real plans of the tiny recipe, without probing this machine."""

from __future__ import annotations

from pathlib import Path

from orchestrator.shared.env import EnvSnapshot, GpuInfo
from tests.helpers.project import ROOT, TINY

H100 = GpuInfo("NVIDIA H100 80GB HBM3", 80 * 2**30, 9.0)
V100 = GpuInfo("Tesla V100-SXM2-32GB", 32 * 2**30, 7.0)


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
