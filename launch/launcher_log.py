"""The node launcher's own log: which ranks it started (pids, how), the signals it forwarded, how each
rank ended and its own exit code, one timestamped line each. It is the launcher's standard output:
`logs/launcher.log` for a local run, `logs/node-<name>.out` (srun's --output) for each Slurm node.

Each line is one `os.write`, unbuffered: a line written from a signal handler cannot break or
interleave with one the launcher was writing, and a forked rank inherits no unwritten buffer.
"""

from __future__ import annotations

import os
import time


def say(message: str) -> None:
    os.write(1, f"{time.strftime('%Y-%m-%d %H:%M:%S')} launch.node: {message}\n".encode())
