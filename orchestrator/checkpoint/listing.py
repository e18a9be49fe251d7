"""What checkpoints a run holds, read from disk: `orch checkpoints RUN_DIR`.

One row per committed checkpoint (newest first) with the manifest's figures and, unless asked not
to, whether its files still match their content hashes; then the checkpoints set aside (partial
saves, corrupt ones) with the reason recorded when they were moved. Nothing here changes the run
directory: unlike resume, listing never sets anything aside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.shared.checkpoint import store
from orchestrator.errors import CheckpointError
from orchestrator.shared.filetree import read_file, shown, walk
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan

MAX_NOTE_BYTES = 64 << 10
"""`latest` and a set-aside reason are a line each: a larger file is not read."""


@dataclass(frozen=True, kw_only=True)
class CheckpointRow:
    tag: str
    step: int
    tokens: int | None
    size_bytes: int | None
    world_size: int | None
    zero_stage: int | None
    committed_at: float | None
    verified: bool | None  # None: not checked (`--no-verify`)
    reason: str = ""
    latest: bool = False


@dataclass(frozen=True)
class SetAsideRow:
    name: str
    reason: str
    size_bytes: int
    set_aside_at: float


@dataclass(frozen=True)
class CheckpointListing:
    root: Path
    latest: str | None
    checkpoints: list[CheckpointRow]
    set_aside: list[SetAsideRow]


def checkpoint_root(run_dir: Path) -> Path:
    """Where the run keeps its checkpoints: the plan says (a recipe may put them elsewhere), else
    `<run>/checkpoints`. A directory inside the run is taken relative to it, so a run directory that
    was moved or copied still finds its own checkpoints."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not run.plan.is_file():
        return run.default_checkpoints
    plan = read_plan(run)
    planned, planned_run = plan.checkpoint_dir, plan.run_dir
    if planned.is_relative_to(planned_run):
        return run.path / planned.relative_to(planned_run)
    return planned


def list_checkpoints(run_dir: Path, *, verify: bool = True) -> CheckpointListing:
    root = checkpoint_root(run_dir)
    latest = _latest(root)
    rows = [_row(path, verify=verify, latest=path.name == latest) for path in store.committed(root)]
    aside = _set_aside(root / store.SET_ASIDE)
    if not rows and not aside:
        raise CheckpointError(f"{run_dir}: no checkpoints (looked in {root})")
    return CheckpointListing(root, latest, rows, aside)


def _latest(root: Path) -> str | None:
    """The tag `latest` names, if it is a small regular file: it is only a hint."""
    try:
        return read_file(root, store.LATEST, MAX_NOTE_BYTES).decode(errors="replace").strip()
    except (OSError, ValueError):
        return None


def _row(path: Path, *, verify: bool, latest: bool) -> CheckpointRow:
    step = store.step_of(path.name)
    try:
        manifest = store.read_manifest(path)
    except FileNotFoundError:
        return _unreadable_row(path.name, step, "no manifest (the save never committed)", latest=latest)
    except (OSError, ValueError) as exc:
        return _unreadable_row(path.name, step, f"unreadable manifest: {exc}", latest=latest)
    verdict = store.verify(path) if verify else None
    return CheckpointRow(
        tag=path.name,
        step=step if manifest.step is None else manifest.step,
        tokens=manifest.tokens,
        size_bytes=sum(entry.bytes for entry in manifest.files.values()),
        world_size=manifest.world_size,
        zero_stage=manifest.zero_stage,
        committed_at=manifest.committed_at,
        verified=None if verdict is None else verdict.ok,
        reason="" if verdict is None else verdict.reason,
        latest=latest,
    )


def _unreadable_row(tag: str, step: int, reason: str, *, latest: bool) -> CheckpointRow:
    """A checkpoint without a readable manifest: its name and step are all that is known, and it does not verify."""
    return CheckpointRow(tag=tag, step=step, tokens=None, size_bytes=None, world_size=None, zero_stage=None, committed_at=None,
                         verified=False, reason=reason, latest=latest)


def _set_aside(directory: Path) -> list[SetAsideRow]:
    """Newest first; the reason file's time is when the checkpoint was moved aside. What was set
    aside failed to verify, so it is read as verification reads: no links followed, the walk bounded."""
    if not directory.is_dir():
        return []
    rows = []
    for path in (p for p in directory.iterdir() if p.is_dir() and not p.is_symlink()):
        try:
            reason = read_file(path, store.REASON_FILE, MAX_NOTE_BYTES).decode(errors="replace").strip()
            moved_at = (path / store.REASON_FILE).stat().st_mtime
        except (OSError, ValueError):
            reason, moved_at = "(no reason recorded)", path.stat().st_mtime
        size = sum(size for name, size in walk(path).files.items() if name != store.REASON_FILE)
        rows.append(SetAsideRow(path.name, reason, size, moved_at))
    return sorted(rows, key=lambda r: r.set_aside_at, reverse=True)


# -- text ------------------------------------------------------------------------------------


def render_listing(listing: CheckpointListing) -> str:
    lines = [f"checkpoints in {listing.root}" + (f" (latest -> {shown(listing.latest)})" if listing.latest else "")]
    if listing.checkpoints:
        header = ["", "TAG", "STEP", "TOKENS", "SIZE", "WORLD", "ZERO", "COMMITTED", "VERIFIED"]
        body = [
            ["*" if r.latest else "", r.tag, str(r.step), _count(r.tokens), human_bytes(r.size_bytes), _count(r.world_size),
             _count(r.zero_stage), _when(r.committed_at), _verdict(r)]
            for r in listing.checkpoints
        ]
        lines += _table(header, body, right={2, 3, 4, 5, 6})
        if any(r.latest for r in listing.checkpoints):
            lines.append("  * = the checkpoint `latest` points to")
    else:
        lines.append("  (no committed checkpoints)")
    if listing.set_aside:
        lines.append(f"set aside in {listing.root / store.SET_ASIDE}:")
        body = [[shown(r.name), human_bytes(r.size_bytes), _when(r.set_aside_at), shown(r.reason)] for r in listing.set_aside]
        lines += _table(["NAME", "SIZE", "SET ASIDE", "REASON"], body, right={1})
    return "\n".join(lines)


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _count(value: int | None) -> str:
    """A manifest's figure; one edited into something else is shown as it is, not a traceback."""
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else shown(repr(value))


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    except (TypeError, ValueError, OverflowError, OSError):
        return shown(repr(timestamp))


def _verdict(row: CheckpointRow) -> str:
    if row.verified is None:
        return "not checked"
    return "yes" if row.verified else f"no: {shown(row.reason)}"


def _table(header: list[str], body: list[list[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned; the last column is never padded."""
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        padded[-1] = cells[-1]
        return "  " + "  ".join(padded).rstrip()

    return [line(header), *(line(row) for row in body)]
