"""The `orch` command line: each command parses, calls one library function, and prints.

Heavy libraries (torch, deepspeed, transformers) are never imported here, so `orch --help`,
`validate` and `plan` answer quickly; only the processes `run` starts import them. Commands are
registered on `app` by their modules, in the order `orch --help` lists them.
"""

from __future__ import annotations

import atexit
import os
import sys

from orchestrator.cli import training, watching, models, sweeps  # noqa: F401  (each registers its commands, in this order)
from orchestrator.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """The `orch` console script and `python -m orchestrator`.

    A command that loaded torch and transformers (gate, export, release) would spend about 2 s on
    2 cores tearing their modules down at interpreter exit: its files are written and closed by
    then, so the exit hooks libraries registered run, and the process ends without the teardown."""
    try:
        app()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    if "torch" not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
