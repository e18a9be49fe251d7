"""The study's journal file, as Optuna's `JournalFileBackend` with three guarantees it lacks.

- A command that only reads (`orch sweep status|report`, the slots left to submit) opens it
  read-only: appending is refused, so reading a sweep never changes it. (Optuna's
  `create_study(load_if_exists=True)` appends a create-study record at every call.)
- Before appending, under the journal's lock, a last line that is not a whole record is set aside
  into `study.journal.set-aside` and cut off. A crash mid-append leaves such a line; Optuna reads
  past it, but appends onto it, and the merged line then broke every later read of the sweep.
- A record that is not JSON, not an object or of an unknown kind is refused as a damaged journal,
  naming its line, rather than an Optuna traceback.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.storages.journal._storage import JournalOperation  # the record kinds its replay knows (since 4.0)

from orchestrator.errors import SweepError

SET_ASIDE_SUFFIX = ".set-aside"
OP_CODES = frozenset(op.value for op in JournalOperation)
_TAIL_BLOCK = 1 << 16


class Journal(JournalFileBackend):
    """`study.journal` under Optuna's open(2)-based lock, read checked and, unless `writable`, never appended to."""

    def __init__(self, path: Path, writable: bool):
        self.path = path
        self.writable = writable
        self.lock = JournalFileOpenLock(str(path))
        super().__init__(str(path), lock_obj=self.lock)

    def read_logs(self, log_number_from: int):
        line = log_number_from  # lines read so far: the next record's line number is one more
        try:
            for log in super().read_logs(log_number_from):
                line += 1
                if not isinstance(log, dict):
                    raise damaged(self.path, f"line {line}: not a journal record (JSON, but not an object)")
                if log.get("op_code") not in OP_CODES:
                    raise damaged(self.path, f"line {line}: an unknown op code {json.dumps(log.get('op_code'))[:40]}")
                yield log
        except (ValueError, RecursionError):  # Optuna raises a line's JSON error when it reads the next line
            raise damaged(self.path, f"line {line + 1}: not a JSON record") from None

    def append_logs(self, logs: list[dict]) -> None:
        if not self.writable:
            raise RuntimeError(f"{self.path} was opened to read: nothing may be appended")
        self.lock.acquire()
        try:
            set_aside_tail(self.path)
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            with open(self.path, "ab") as out:  # as Optuna appends, one write of whole lines
                out.write(text.encode())
                out.flush()
                os.fsync(out.fileno())
        finally:
            self.lock.release()


def damaged(path: Path, why: str) -> SweepError:
    return SweepError(f"{path}: damaged ({why}); the sweep was left as it is")


def set_aside_tail(path: Path) -> bytes:
    """Cut off the journal's last line when it is not a whole record (a crash mid-append), keeping it
    in the set-aside file beside the journal; returns what was cut (nothing, usually). Call it holding
    the journal's lock: every appender appends under it, so what it finds is no append in progress."""
    with open(path, "rb") as journal:
        size = journal.seek(0, os.SEEK_END)
        start = _last_line_start(journal, size)
        journal.seek(start)
        last = journal.read()
    if not last or _is_record(last):
        return b""
    aside = path.with_name(path.name + SET_ASIDE_SUFFIX)
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with open(fd, "ab") as out:
            out.write(last if last.endswith(b"\n") else last + b"\n")
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise SweepError(f"{path} ends in a torn record that cannot be set aside into {aside} ({exc.strerror}): "
                         "nothing was appended") from None
    os.truncate(path, start)
    logging.getLogger(__name__).warning("%s: its last line was not a whole record (a crash mid-append): set aside into %s",
                                        path, aside)
    return last


def _last_line_start(journal, size: int) -> int:
    """The offset where the file's last line starts (after the newline that ends the line before it)."""
    block = _TAIL_BLOCK
    while True:
        start = max(0, size - block)
        journal.seek(start)
        data = journal.read(size - start)
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0:
            return start + cut + 1
        if start == 0:
            return 0
        block *= 4


def _is_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        log = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(log, dict) and log.get("op_code") in OP_CODES
