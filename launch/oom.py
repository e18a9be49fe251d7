"""A rank that runs out of memory ends with EXIT_OOM instead of a crash's 1, so that its node
launcher records the attempt's failure as `oom` (`launch.restarts`). The OOM killer's SIGKILL
leaves no exception: the launcher reads that one from the kernel's counter."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.errors import EXIT_OOM


@contextmanager
def exit_on_oom() -> Iterator[None]:
    """Around a rank's whole life: MemoryError or torch's OutOfMemoryError, with its traceback in
    the rank's log, becomes SystemExit(EXIT_OOM); anything else passes."""
    try:
        yield
    except BaseException as exc:
        if not out_of_memory(exc):
            raise
        traceback.print_exc()
        raise SystemExit(EXIT_OOM) from None


def out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # a rank that never imported torch cannot have raised its error
    kinds = (MemoryError, *(kind for kind in (getattr(torch, "OutOfMemoryError", None),) if kind is not None))
    return isinstance(exc, kinds)
