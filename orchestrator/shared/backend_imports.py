"""Importing a training library the way both planes need it: shared by the ranks and by the commands
that read checkpoints (gate, export, release)."""

from __future__ import annotations

import importlib
import os
import sys


def import_deepspeed(hide_mlflow: bool = True):
    """DeepSpeed's autotuner imports MLflow whenever it is installed: about 2 s of every rank's
    start-up, and of every `orch gate`, `export` and `release`, on 2 cores, for autotuning the
    orchestrator never uses. It is hidden from that import unless the caller may need MLflow in
    another thread meanwhile (a rank whose tracking mirror could be importing it)."""
    if not hide_mlflow or "mlflow" in sys.modules:
        import deepspeed
    else:
        sys.modules["mlflow"] = None  # `import mlflow` raises ImportError, which DeepSpeed expects
        try:
            import deepspeed
        finally:
            del sys.modules["mlflow"]
    return deepspeed


def import_muon_uncompiled() -> None:
    """For the processes that train with DeepSpeed. DeepSpeed imports its Muon optimizer wherever it
    asks whether an optimizer is a Muon one (ZeRO's optimizer set-up, every gradient reduction), and
    that module compiles Muon's kernels with torch.compile as it is imported, which sets up Dynamo
    and Inductor: about 2.6 s of CPU in every rank of every attempt, on 2 cores, for an optimizer the
    orchestrator never uses (it trains with AdamW). Imported here first with Dynamo off
    (`TORCHDYNAMO_DISABLE`, read when torch.compile is called), its functions stay plain Python,
    and the module is then only looked up."""
    previous = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        importlib.import_module("deepspeed.runtime.zero.muon.muon_optimizer")
    finally:
        if previous is None:
            del os.environ["TORCHDYNAMO_DISABLE"]
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = previous
