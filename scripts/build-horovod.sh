#!/usr/bin/env bash
# Build Horovod from its source distribution, with PyTorch and Gloo and without MPI, and install it
# into the project's virtualenv. The wheel is cached per Horovod, PyTorch and Python version (it links
# against PyTorch's C++ ABI), so a second run installs in seconds instead of compiling for minutes.
#
# Why a patched build: the last Horovod release (0.28.1) compiles as C++14, which current PyTorch
# headers refuse; raising the standard to 17 in its two CMake files is all it needs. The system CMake
# is used: the CMake from PyPI (4.x) rejects Horovod's old `cmake_minimum_required`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
VERSION=0.28.1
SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
CACHE=${ORCH_WHEEL_CACHE:-$HOME/.cache/orchestrator/wheels}

key="horovod-$VERSION-torch$("$PY" -c 'import torch; print(torch.__version__)')-$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
stamp="$VENV/.horovod-build"
if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && "$PY" -c "import horovod.torch" 2>/dev/null; then
  exit 0
fi

wheels="$CACHE/$key"
if ! ls "$wheels"/horovod-*.whl >/dev/null 2>&1; then
  if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake g++ make
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "horovod: building $VERSION from source for $key (a few minutes)"
  "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$work"
  echo "$SDIST_SHA256  $work/horovod-$VERSION.tar.gz" | sha256sum -c --quiet
  tar xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
  src="$work/horovod-$VERSION"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt"
  mkdir -p "$wheels"
  # cmake first on PATH from the system, never a pip-installed 4.x from the virtualenv.
  PATH="/usr/bin:$PATH" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_GPU_OPERATIONS= MAKEFLAGS="-j$(nproc)" \
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/out" "$src"
  mv "$work"/out/horovod-*.whl "$wheels/"
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$wheels"/horovod-*.whl
"$PY" -m pip install -q "$wheels"/horovod-*.whl  # its dependencies, from the registry
echo "$key" > "$stamp"
"$VENV/bin/horovodrun" --check-build | grep -E '^\s+\[X\] (PyTorch|Gloo)$' | tr -s ' ' | sed 's/^/horovod: /'
