#!/usr/bin/env bash
# Prepare gpu-bundle/ for the GPU check (README "GPU path"), on this machine, where pip can download:
#   bash scripts/gpu-bundle.sh        then, on the GPU machine with gpu-bundle/ carried:  bash scripts/gpu-check.sh
# It holds (a) wheels for CPython 3.12 on manylinux x86_64 of what the project needs and the GPU machine lacks
# (not torch, transformers, accelerate, pyarrow or anything CUDA: the machine's own are used): PyPI's wheel
# where it has one, else the sdist built into a wheel here (DeepSpeed without ops, rouge-score, ...), and the
# project's own wheel; (b) the llama-1b-gpu recipe's corpus and its prepared token data, copied from orch's
# data cache (prepared there first if missing: a minute or so).
# Idempotent: what is already there is kept. Fails if the bundle exceeds 60 MiB (the carry limit is 64 MiB).
# GPU_BUNDLE=DIR puts it elsewhere (gpu-check.sh reads the same variable); GPU_PYTHON=X.Y[.Z] builds it for
# another Python (the tests build one for their own, to install it).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
BUNDLE=${GPU_BUNDLE:-gpu-bundle}
TARGET_PYTHON=${GPU_PYTHON:-3.12.3}
WHEELS=$BUNDLE/wheels
LIMIT_MIB=60
mkdir -p "$WHEELS"

# The pins (versions installed and tested here), the requirements gpu-check.sh installs, and a wheel of each.
"$PY" bench/gpu_bundle.py wheels --bundle "$BUNDLE" --python "$TARGET_PYTHON"

# The project itself, rebuilt every time (the tree changes), from a copy so that no build/ is left in the tree.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r pyproject.toml orchestrator launch "$src"/
rm -f "$WHEELS"/orchestrator-*.whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$src" >/dev/null

"$PY" bench/gpu_bundle.py data --bundle "$BUNDLE"

bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "gpu-bundle: $(ls "$WHEELS" | wc -l) wheels $(mib "$(du -sb "$WHEELS" | cut -f1)") MiB, data $(mib "$(du -sb --exclude=wheels "$BUNDLE" | cut -f1)") MiB;" \
     "total $(mib "$bundle_bytes") MiB (limit $LIMIT_MIB); with the working tree that travels ($(mib "$tree_bytes") MiB):" \
     "$(mib $((bundle_bytes + tree_bytes))) of 64 MiB"
if [ "$bundle_bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu-bundle: over $LIMIT_MIB MiB: it would not travel with the tree" >&2
  exit 1
fi
