#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian machine, idempotently:
# a virtualenv in .venv with the CPU build of PyTorch and the package with its test extras.
# A second run only reinstalls what changed (stamp files keyed by the files that define it).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# CPU build by default; on a GPU machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.orchestrator-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned: an open range would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
# DeepSpeed compiles its shared-memory collective op on the first CPU process group. Build it
# here, once and alone: otherwise every rank races to compile it at start, and a rank killed
# mid-build (the fault-tolerance tests kill ranks) leaves a lock that hangs the next start.
# The directory matches the default of launch.node, and so does the ninja: the venv's first on PATH
# (two ninja versions log different hashes for one command, and each rebuilds after the other).
PATH="$(cd "$VENV/bin" && pwd):$PATH" TORCH_EXTENSIONS_DIR="$VENV/torch-extensions" DS_ACCELERATOR=cpu "$VENV/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null 2>&1 || true
# The versions from the packages' metadata, not by importing them: importing DeepSpeed on a CPU
# machine prints its "Setting accelerator to CPU" warning, and the three imports take 7 s on 2 cores.
echo "setup: $("$VENV/bin/python" -c 'from importlib.metadata import version; print(" ".join(f"{n} {version(n)}" for n in ("torch", "deepspeed", "transformers")))')"
