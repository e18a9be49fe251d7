"""How a node launcher starts its ranks: a fresh interpreter each, or forked from the launcher.

A rank spends most of a short run's start-up importing torch, DeepSpeed and transformers (about 8 s
of CPU each on this project's 2-core machines, every rank of every attempt). Where the backend says
what its engine imports (`preload`) and the ranks run on CPUs, the launcher imports it once and
forks its ranks from itself, as a forkserver's preload does: they start with the libraries already
loaded and share those pages. GPU ranks always start fresh: CUDA must not be initialised in a parent
that forks, and importing these libraries may probe it. Horovod declares no preload: its launcher
serves the rendezvous from threads while it starts the ranks, and a threaded process must not fork.

Forked ranks inherit the launcher's open files, the run directory's attempt lock among them, so the
kernel frees that lock only when the last of them has exited. An in-job restart (`launch.restarts`)
forks the next attempt's ranks from the same launcher: the imports are paid once per node launcher.
By then its thread that watches `orch run`'s pipe lives; it only waits in a read, holding no lock a
child could inherit taken.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Protocol

from launch.launcher_log import say
from orchestrator.rundir.entry import FORWARDED_SIGNALS, rank_argv
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan, read_recipe


class Rank(Protocol):
    """The part of `subprocess.Popen` the launcher uses."""

    pid: int
    killed: bool
    """Whether the launcher killed it (a peer of a failed rank), rather than it failing by itself."""

    def poll(self) -> int | None: ...
    def wait(self) -> int: ...
    def send_signal(self, signum: int) -> None: ...
    def kill(self) -> None: ...


def start_ranks(run_dir: Path, backend: ModuleType, envs: list[dict[str, str]]) -> list[Rank]:
    """One rank per environment, forked after the backend's preload where that is safe, else `python -m launch.rank`."""
    plan, recipe = read_plan(RunDir(run_dir)), read_recipe(RunDir(run_dir))
    preload = getattr(backend, "preload", None)
    if plan.topology.device != "cpu" or preload is None:
        ranks = [FreshRank(rank_argv(sys.executable, run_dir), env=env, stdin=subprocess.DEVNULL) for env in envs]
        how = "each in a fresh interpreter"
    else:
        importlib.import_module("launch.rank")  # the rank's own modules, once for every rank
        preload(recipe, plan)
        ranks = [ForkedRank.start(run_dir, env) for env in envs]
        how = f"forked from this launcher after it imported {plan.backend}'s libraries"
    started = [f"rank {env['RANK']} (pid {rank.pid})" for env, rank in zip(envs, ranks)]
    say(f"started {', '.join(started)}, {how}")
    return ranks


class FreshRank(subprocess.Popen):
    """A rank in a fresh interpreter (`python -m launch.rank`)."""

    killed = False

    def kill(self) -> None:
        self.killed = True
        super().kill()


class ForkedRank:
    """A rank forked from the launcher: `launch.rank.run_rank` in the child, whose exit status reads as a Popen's."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self.killed = False

    @classmethod
    def start(cls, run_dir: Path, env: dict[str, str]) -> "ForkedRank":
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _rank_child(run_dir, env)
        return cls(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.killed = True
        self.send_signal(signal.SIGKILL)


def _rank_child(run_dir: Path, env: dict[str, str]) -> None:
    """The forked child: the rank's environment and standard input as a fresh rank would have them,
    the launcher's signal handlers undone (the rank installs its own), then the rank. Never returns."""
    code = 1
    try:
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        from launch.oom import exit_on_oom
        from launch.rank import run_rank

        with exit_on_oom():
            run_rank(run_dir)  # ends the process itself with the training loop's exit code
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
