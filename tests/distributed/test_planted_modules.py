"""`orch run` where the working directory holds modules named like the project's: the node launcher
and the ranks still run the project's code (they start with `-P`; tests/unit/test_safe_path.py
checks each planned command)."""

import sys
from pathlib import Path
import subprocess

import pytest

from tests.helpers.project import FAST, RECIPES, TINY

pytestmark = pytest.mark.distributed

PLANTED = "import pathlib, sys; pathlib.Path(__file__).with_name('ran').write_text(__file__); sys.exit(99)\n"


def test_a_dry_run_beside_a_planted_launch_package_runs_the_project(tmp_path):
    cwd = tmp_path / "work"
    (cwd / "launch").mkdir(parents=True)
    (cwd / "launch" / "__init__.py").write_text(PLANTED)
    (cwd / "orchestrator.py").write_text(PLANTED)
    # The recipe's gate files are relative to the working directory, which is not the checkout here.
    gates = [f"gates.bias.pairs={RECIPES / 'gates' / 'bias-pairs.jsonl'}", f"gates.evaluation.task_dirs=[{RECIPES / 'gates' / 'tasks'}]"]
    orch = Path(sys.executable).parent / "orch"  # the script a user types: the CLI itself never had the directory on its path
    result = subprocess.run([str(orch), "run", str(TINY), *FAST, *gates, "--run-dir", str(tmp_path / "run"), "--dry-run"],
                            cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 5 steps" in result.stdout
    assert not (cwd / "ran").exists() and not (cwd / "launch" / "ran").exists()
