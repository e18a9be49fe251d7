#!/usr/bin/env bash
# Headless Chromium from Debian, for the test that renders `orch report` output. Idempotent.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
command -v apt-get >/dev/null || { echo "install-chromium: no chromium and no apt-get: install Chromium by hand" >&2; exit 1; }
log=${TMPDIR:-/tmp}/orchestrator-chromium-apt.log
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "install-chromium: apt-get failed (full log: $log)" >&2
  exit 1
fi
