"""One live attempt per run directory, with real processes: `orch run` killed alone leaves no
orphans training on, a second attempt never trains beside the first, a dry run never touches the
real run, and no run compiles DeepSpeed's CPU op again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.starting.attempt import hold_attempt
from orchestrator.errors import EXIT_RUN_BUSY, RunBusy
from orchestrator.rundir.layout import RunDir
from tests.helpers.processes import orch, start_orch, wait_for_rows
from tests.helpers.project import FAST, ROOT

pytestmark = pytest.mark.distributed

STEPS = 30
BASE = ["recipes/tiny-pretrain.yaml", *FAST, f"train.steps={STEPS}", "checkpoint.interval_steps=1000"]


def steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in RunDir(run_dir).metric_rows()]


def test_killing_orch_run_alone_stops_its_ranks_after_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    first = start_orch("run", *BASE, "--run-dir", str(run_dir))
    wait_for_rows(first, run_dir, 3)
    first.kill()  # the CLI alone, as the OOM killer or a closed terminal would
    first.wait()
    orphans = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert orphans, "the node launcher and ranks should outlive the CLI long enough to checkpoint"

    second = subprocess.run([sys.executable, "-m", "orchestrator", "run", *BASE, "--run-dir", str(run_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    _, alive = psutil.wait_procs(orphans, timeout=240)
    assert not alive, f"still running 240 s after orch run died: {[p.pid for p in alive]}"

    history = RunDir(run_dir).history()
    preempted = [e for e in history if e["event"] == "preempted"]
    assert preempted and preempted[0]["signal"] == signal.SIGTERM and preempted[0]["saved"], history
    stopped = preempted[0]["step"]
    assert stopped < STEPS and (run_dir / "checkpoints" / f"step-{stopped:08d}" / "manifest.json").exists()
    assert "orch run is gone" in RunDir(run_dir).launcher_log.read_text()
    if second.returncode == EXIT_RUN_BUSY:
        assert f"in use by a live attempt: orch run pid {first.pid}" in second.stderr
        assert steps(run_dir) == list(range(1, stopped + 1))
    else:
        assert second.returncode == 0, second.stderr
        resumed = [e for e in history if e["event"] == "resumed"]
        assert [e["step"] for e in resumed] == [stopped], history
        assert steps(run_dir) == list(range(1, STEPS + 1))


def test_a_detached_run_trains_on_without_orch_run_and_holds_its_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = orch("run", "recipes/tiny-pretrain.yaml", *FAST, "train.steps=3", "--detach", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert f"follow with: orch status -f {run_dir}" in result.stdout
    with pytest.raises(RunBusy, match=r"that orch run has exited.*kill -TERM \d+"):
        hold_attempt(run_dir)  # the node launcher holds it: it was started with the lock before orch run returned
    deadline = time.monotonic() + 300
    while True:  # until the launcher ends and the kernel frees the lock with it
        try:
            hold_attempt(run_dir).close()
            break
        except RunBusy:
            assert time.monotonic() < deadline, "the detached run still holds its directory after 300 s"
            time.sleep(0.1)
    assert "completed" in [e["event"] for e in RunDir(run_dir).history()] and steps(run_dir) == [1, 2, 3]
    assert "orch run is gone" not in RunDir(run_dir).launcher_log.read_text()


def venv_ninja_log() -> Path:
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions"))
    return Path(extensions) / "deepspeed_shm_comm" / ".ninja_log"


def build_shm_op_as_setup_does() -> None:
    """scripts/setup.sh's build: the venv's bin first on PATH. A no-op when it is already built so."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ["PATH"]]), "DS_ACCELERATOR": "cpu",
           "TORCH_EXTENSIONS_DIR": str(venv_ninja_log().parent.parent)}
    subprocess.run([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"], env=env, check=True,
                   capture_output=True, timeout=900)


def orch_without_venv_on_path(*args: str) -> subprocess.CompletedProcess:
    """`orch` as run by its full path from a shell where the venv is not activated."""
    venv_bin = os.path.realpath(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if os.path.realpath(p) != venv_bin]
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": os.pathsep.join(path)})


def test_a_real_run_after_a_dry_run_starts_at_step_0_and_neither_compiles(tmp_path):
    build_shm_op_as_setup_does()
    ninja_log = venv_ninja_log().read_bytes()
    run_dir = tmp_path / "run"
    overrides = [*FAST, "train.steps=3", "train.gradient_accumulation_steps=2", "train.global_batch_size=null"]

    dry = orch_without_venv_on_path("run", "recipes/tiny-pretrain.yaml", *overrides, "--dry-run", "--run-dir", str(run_dir))
    assert dry.returncode == 0, dry.stderr
    assert steps(tmp_path / "run-dry-run") == [1, 2, 3] and not run_dir.exists()

    real = orch_without_venv_on_path("run", "recipes/tiny-pretrain.yaml", *overrides, "--run-dir", str(run_dir))
    assert real.returncode == 0, real.stderr
    assert "resuming" not in real.stdout and steps(run_dir) == [1, 2, 3]
    assert json.loads(RunDir(run_dir).plan.read_text())["dry_run"] is False
    assert venv_ninja_log().read_bytes() == ninja_log, "a run compiled DeepSpeed's CPU op again"
