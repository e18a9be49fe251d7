#!/usr/bin/env bash
# The GPU check (README "GPU path"), on the machine with the GPU, from the repository root, with gpu-bundle/
# carried (made by `bash scripts/gpu-bundle.sh` where pip works):
#   bash scripts/gpu-check.sh [--install-only | bench/gpu.py's options, e.g. --smoke --runs DIR]
# Makes a venv that sees the machine's own CUDA torch and transformers, installs the carried wheels with no
# index, then runs bench/gpu.py's five steps (dry run, bf16 throughput and MFU, energy bill, gates, ZeRO-3),
# each with its own time limit, all within GPU_CHECK_TOTAL_S (450 s). Results: $OUT/gpu-check.json where OUT
# is set, else ./gpu-check.json, and this output in gpu-check.log beside it. Exit 1 if a step failed.
# --install-only stops after the venv (exit 1 if the install failed): the tests run it on a bundle for their
# own Python, with PYTHON naming a stand-in for the machine's, and then the check's CPU smoke (--smoke).
# GPU_BUNDLE=DIR reads the bundle from DIR, as gpu-bundle.sh wrote it there.
set -uo pipefail
cd "$(dirname "$0")/.."

TOTAL_S=${GPU_CHECK_TOTAL_S:-450}
PYTHON=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-/tmp/orch-gpu-check-venv}
BUNDLE=${GPU_BUNDLE:-gpu-bundle}
WHEELS=$BUNDLE/wheels
OUT_DIR=${OUT:-.}
install_only=false
if [ "${1:-}" = --install-only ]; then install_only=true; shift; fi
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1
tee_pid=$!
finish() {  # tee sees the end and writes the last lines before the script exits
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null
  exit "$1"
}

if [ ! -f "$BUNDLE/requirements.txt" ] || ! ls "$WHEELS"/orchestrator-*.whl >/dev/null 2>&1; then
  echo "gpu-check: $BUNDLE/ is missing or incomplete: run bash scripts/gpu-bundle.sh where pip works, and carry $BUNDLE/"
  finish 2
fi
# Without ensurepip there, the venv borrows the machine's pip, which then installs into the venv.
"$PYTHON" -m venv --system-site-packages "$VENV" 2>/dev/null || { rm -rf "$VENV"; "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"; } || finish 2
# python3 on the lent machine is itself a venv (/opt/torch/.venv); a venv made from it sees the base
# interpreter's packages, not that venv's: those are added by a .pth file, behind the new venv's own.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PYTHON" -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")' \
  > "$site/gpu-machine-packages.pth"
"$VENV/bin/python" -m pip --version >/dev/null || { echo "gpu-check: no pip for $VENV"; finish 2; }

# The project's requirements from the carried wheels, keeping the machine's versions where they satisfy them
# (torch, transformers, ...); if they cannot be resolved together, every carried wheel as it is.
pip=("$VENV/bin/python" -m pip install -q --no-index --no-compile --disable-pip-version-check --find-links "$WHEELS")
install=resolved
if ! timeout 240 "${pip[@]}" -r "$BUNDLE/requirements.txt"; then
  echo "gpu-check: the carried wheels do not resolve against this machine's packages (above); installing them with --no-deps"
  install=fallback
  timeout 240 "${pip[@]}" --no-deps "$WHEELS"/*.whl || install=failed
fi
timeout 60 "${pip[@]}" --no-deps "$WHEELS"/orchestrator-*.whl || install=failed
"$VENV/bin/python" -m pip check > "$VENV/pip-check.txt" 2>&1
setup_s=$SECONDS
if $install_only; then
  complaints=$(grep -cv 'No broken requirements' "$VENV/pip-check.txt")
  echo "gpu-check: install $install in ${setup_s} s into $VENV; pip check: $complaints complaint(s) in $VENV/pip-check.txt"
  finish "$([ "$install" = failed ] && echo 1 || echo 0)"
fi
budget_s=$((TOTAL_S > setup_s ? TOTAL_S - setup_s : 0))

timeout $((budget_s + 30)) "$VENV/bin/python" bench/gpu.py --budget-s "$budget_s" --bundle "$BUNDLE" \
  --install "$install" --setup-s "$setup_s" --pip-check "$VENV/pip-check.txt" "$@"
finish $?
