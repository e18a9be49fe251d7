"""One live attempt per run directory: the lock `orch run` takes before it changes anything there.

Two attempts training into one directory would interleave their checkpoints and metrics. The lock
is an flock on the directory's `attempt.lock`, and the kernel drops an flock when the last process
holding its open file is gone, however it died: no stale lock to clean up after a SIGKILL or the
OOM killer. `orch run` hands the same open file to the node launcher (`SubprocessRunner`), so the
directory stays taken while either lives: a CLI killed mid-run leaves a launcher that is still
checkpointing, and a detached launcher trains on alone. The file also names its holder for the
refusal message.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from orchestrator.errors import LaunchError, RunBusy
from orchestrator.rundir.checkpoint_records import AttemptHolder, parse_holder
from orchestrator.rundir.layout import RunDir


class Attempt:
    """This process's hold on a run directory; `close` lets go (processes started with it keep it)."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir, self.fd = run_dir, fd
        self.holder = AttemptHolder(pid=os.getpid(), host=socket.gethostname(), since=time.time())
        self._write()

    def add_process(self, pid: int) -> None:
        """A process started with the lock: the refusal message names it, as the one to wait for or stop."""
        self.holder = self.holder.model_copy(update={"launchers": [*self.holder.launchers, pid]})
        self._write()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Attempt":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _write(self) -> None:
        content = self.holder.to_bytes()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, content, 0)


def hold_attempt(run_dir: Path) -> Attempt:
    """Take `run_dir` (created if missing) for this attempt, or raise RunBusy naming the live one."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(RunDir(run_dir).attempt_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LaunchError(f"{run_dir}: cannot be a run directory ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = parse_holder(os.pread(fd, 4096, 0))
        os.close(fd)
        raise RunBusy(f"{run_dir} is in use by a live attempt: {_describe_holder(holder)}; wait for it to end, "
                      "stop it (it checkpoints first), or use another --run-dir") from None
    return Attempt(run_dir, fd)


def _describe_holder(holder: AttemptHolder | None) -> str:
    """Who holds the lock, in words: the `orch run` that took it, when, and the launcher to stop."""
    if not holder:
        return "another orch run, just starting"
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(holder.since))
    words = f"orch run pid {holder.pid} on {holder.host} since {since}"
    if holder.host == socket.gethostname() and not _alive(holder.pid):
        words += " (that orch run has exited; its node launcher trains on, detached, or is stopping after a checkpoint)"
    if holder.launchers:
        words += f"; stop it with: kill -TERM {' '.join(map(str, holder.launchers))}"
    return words


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
