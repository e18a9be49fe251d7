"""What `make setup` (and so every `make demo`) prints once the environment is in place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup.sh"


def test_the_version_line_has_no_library_warnings():
    """The line that reports the versions, run as the script runs it, against this venv: it printed
    DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." warning at every `make demo`. (The
    whole script is not run here: with a stale stamp it would reinstall packages.)"""
    (line,) = [line for line in SETUP.read_text().splitlines() if line.startswith('echo "setup:')]
    result = subprocess.run(["bash", "-c", line], env={**os.environ, "VENV": sys.prefix}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("setup: torch ") and " deepspeed " in result.stdout and " transformers " in result.stdout
    assert len(result.stdout.splitlines()) == 1 and "Setting accelerator" not in result.stdout, result.stdout
