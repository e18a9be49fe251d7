"""The run files about checkpoints and attempts, as frozen, typed records: a checkpoint's
`manifest.json`, the run's `summary.json` and the holder written into `attempt.lock`.

Each has one writer and one reader here (`read_manifest`, `read_summary`, `read_holder`), so a
renamed field fails in a unit test, not as a KeyError in `orch export` or on a rank. Each carries a
`format`: files written before the field existed read as format 0, the same fields without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, ValidationError

from orchestrator.shared.goodput import GoodputLedger
from orchestrator.shared.filetree import inside, read_json, shown
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import Record, _read

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
"""Far above any manifest's size (about 100 bytes a file): a larger one is not read."""
FORMAT = 1
"""The shape this version writes; 0 is the same shape from before the `format` field."""


class _Versioned(Record):
    format: int = Field(default=FORMAT, ge=0, le=FORMAT)
    """What a record is written with; read as 0 from a file written before the field existed, and
    refused above FORMAT (a newer orch wrote it)."""

    @classmethod
    def from_file(cls, content: object):
        """The record a file holds (its parsed JSON): one without `format` is of format 0."""
        if isinstance(content, (str, bytes)):
            content = json.loads(content)
        if isinstance(content, dict) and "format" not in content:
            content = {"format": 0, **content}
        return cls.model_validate(content)


# -- checkpoint manifest --------------------------------------------------------------------------


class FileEntry(Record):
    """One file of a checkpoint: what verification compares it with before anything is unpickled."""

    bytes: StrictInt = Field(ge=0)
    xxh3_128: str


class CheckpointManifest(_Versioned):
    """What makes a checkpoint committed: every file with its size and content hash, and what it was
    saved from. The figures are absent from a listing alone (a universal conversion's own manifest)."""

    files: dict[str, FileEntry]
    step: int | None = None
    committed_at: float | None = None
    tokens: int | None = None
    world_size: int | None = None
    zero_stage: int | None = None
    recipe: dict[str, Any] | None = None
    recipe_hash: str | None = None
    libraries: dict[str, Any] | None = None

    def to_json(self) -> str:
        """As `manifest.json` holds it: keys sorted, only the fields this manifest has."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=1, sort_keys=True)


def read_manifest(checkpoint: Path) -> CheckpointManifest:
    """A checkpoint's manifest, read as a listed file is (a FIFO or a link in its place is refused,
    not waited on); FileNotFoundError without one, ValueError, in one line, for one that is no
    manifest: its files must be names inside the checkpoint, each with its size and hash."""
    content = read_json(checkpoint, MANIFEST, MAX_MANIFEST_BYTES)
    _check_files(content)
    try:
        return CheckpointManifest.from_file(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(shown(str(part)) for part in first['loc'])}: {first['msg']}") from None


def _check_files(content: object) -> None:
    """The files' shape first, each problem named by its file (the messages `orch checkpoints` shows)."""
    files = content.get("files") if isinstance(content, dict) else None
    if not isinstance(files, dict):
        raise ValueError("it has no `files` mapping")
    for name, entry in files.items():
        if not inside(name):
            raise ValueError(f"{name!r} is not a path inside the checkpoint")
        if not (isinstance(entry, dict) and type(entry.get("bytes")) is int and entry["bytes"] >= 0
                and isinstance(entry.get("xxh3_128"), str)):
            raise ValueError(f"{shown(name)} has no size (`bytes`) and content hash (`xxh3_128`)")


# -- run summary ----------------------------------------------------------------------------------


class SummaryEnergy(Record):
    """The energy bill's totals, as the summary repeats them (the bill itself is `energy.json`); a
    reader takes what a summary holds, as it does the summary's other figures."""

    kwh: float | None = None
    facility_kwh: float | None = None
    kgco2e: float | None = None
    coverage: float = 0.0
    """The share of the energy measured rather than estimated."""
    j_per_token: float | None = None


class RunSummary(_Versioned):
    """The final figures of a completed run, written by rank 0 as its last act. Only `status` is
    sure to be there: a summary from an earlier version may lack the others (`attempt_wall_s`
    came later), and a reader says what it cannot show rather than failing."""

    status: str
    steps: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    final_val_loss: float | None = None
    tokens: int | None = None
    wall_s: float | None = None
    """Since the first attempt's launch (its first step's start in summaries written before the
    ledger): the gaps between attempts count, as in goodput."""
    attempt_wall_s: float | None = None
    """This attempt's own, from its start to the summary."""
    goodput: float | None = None
    """The ledger's: productive step time over the wall time."""
    restarts: int | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    checkpoint_stall_s: list[float] | None = None
    param_fingerprints: list[Any] | None = None
    checkpoint: str | None = None
    energy: SummaryEnergy | None = None
    ledger: GoodputLedger | None = None
    """Where the wall time went (absent from summaries written before it)."""

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def write_summary(run: RunDir, summary: RunSummary) -> None:
    run.write_json(run.summary, summary.model_dump(mode="json"))


def read_summary(run: RunDir) -> RunSummary | None:
    """The run's summary, None before one is written; DamagedRun for one that does not parse."""
    return _read(run.summary, RunSummary.from_file) if run.summary.exists() else None


# -- attempt holder -------------------------------------------------------------------------------


class AttemptHolder(_Versioned):
    """Who holds a run directory (`orch run`'s process and host, since when) and the node launchers
    started with the lock: the refusal message names them."""

    pid: int
    host: str
    since: float
    launchers: list[int] = []

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json")).encode()


def parse_holder(content: bytes) -> AttemptHolder | None:
    """The holder in `attempt.lock`; None while it is still being written (or is unreadable)."""
    try:
        return AttemptHolder.from_file(content)
    except (ValueError, RecursionError):
        return None
