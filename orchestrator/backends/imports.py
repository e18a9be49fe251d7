"""Importing a training library the way both planes need it: shared by the ranks and by the commands
that read checkpoints (gate, export, release)."""

from __future__ import annotations

import sys


def import_deepspeed(hide_mlflow: bool = True):
    """DeepSpeed's autotuner imports MLflow whenever it is installed: about 2 s of every rank's
    start-up, and of every `orch gate`, `export` and `release`, on 2 cores, for autotuning the
    orchestrator never uses. It is hidden from that import unless the caller may need MLflow in
    another thread meanwhile (a rank whose tracking mirror could be importing it)."""
    if not hide_mlflow or "mlflow" in sys.modules:
        import deepspeed

        return deepspeed
    sys.modules["mlflow"] = None  # `import mlflow` raises ImportError, which DeepSpeed expects
    try:
        import deepspeed
    finally:
        del sys.modules["mlflow"]
    return deepspeed
