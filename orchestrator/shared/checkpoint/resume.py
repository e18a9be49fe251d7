"""The CLI's look at a run directory before launching into it: resume, refuse, or start fresh.

The ranks verify content hashes themselves when they resume; this check only reads manifests, so
an unsafe recipe change is refused before any process starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.shared.checkpoint import store
from orchestrator.shared.checkpoint.compat import recipe_changes, world_change
from orchestrator.errors import ResumeError
from orchestrator.rundir.checkpoint_records import CheckpointManifest
from orchestrator.rundir.layout import PLAN_FILE, RECIPE_FILE, RunDir


def compatibility(manifest: CheckpointManifest, recipe: dict, world_size: int, elastic_ready: bool) -> tuple[list[str], list[str]]:
    """(unsafe, safe) changes between a checkpoint and the recipe and world size at hand. A different
    world size is safe once the checkpoint was prepared for it (`elastic_ready`: `orch run` converts
    it before starting the ranks); the ranks themselves cannot convert it."""
    unsafe, safe = recipe_changes(manifest.recipe, recipe, ignore_world_layout=True)
    moved = world_change(manifest.world_size, world_size)
    if moved and elastic_ready:
        safe.append(moved + " (elastic resume)")
    elif moved:
        unsafe.append(moved + "; start it with `orch run`, which converts the checkpoint")
    return unsafe, safe


@dataclass(frozen=True, kw_only=True)
class ResumePoint:
    """What an attempt continues from, decided before anything starts: the newest checkpoint that
    verifies (the one the ranks will load; None for a fresh start) and its manifest, the recipe
    changes it accepts, and the newer checkpoints that fail verification (the ranks set them aside)."""

    checkpoint: Path | None
    manifest: CheckpointManifest | None
    safe: list[str]
    unverified: list[store.Verdict]

    def line(self) -> str | None:
        """What `orch run` says about it: the step the ranks will resume after, and why not a newer one."""
        if self.manifest is None:
            return None
        line = f"resuming after step {self.manifest.step}"
        if self.unverified:
            line += "; newer " + "; ".join(f"{v.path.name} does not verify ({v.reason})" for v in self.unverified) + ": set aside"
        return line + (f"; with changes: {'; '.join(self.safe)}" if self.safe else "")


def check_resume(checkpoint_dir: Path, recipe: dict, world_size: int) -> ResumePoint:
    """The resume point; raises ResumeError for unsafe changes. The checkpoints are verified here, as
    the ranks will verify them (a resume reads them anyway), so the step named is the one resumed.
    A different world size alone is safe: `orch run` resumes it through a universal checkpoint."""
    checkpoint, unverified = store.newest_verified(checkpoint_dir)
    if checkpoint is None:
        return ResumePoint(checkpoint=None, manifest=None, safe=[], unverified=unverified)
    manifest = store.read_manifest(checkpoint)
    unsafe, safe = compatibility(manifest, recipe, world_size, elastic_ready=True)
    if unsafe:
        raise ResumeError(
            f"cannot resume step {manifest.step} in {checkpoint_dir.parent}: {'; '.join(unsafe)}. "
            "Undo the change, use another --run-dir, or pass --fresh to set this run aside and start over"
        )
    return ResumePoint(checkpoint=checkpoint, manifest=manifest, safe=safe, unverified=unverified)


def check_run_dir(run_dir: Path, fresh: bool) -> None:
    """Refuse a run directory `orch run` must not take, before it writes anything there: the root (it
    has no name to set aside under), or a directory that is not a run's and is not empty (`--run-dir .`
    by mistake): a run would write its recipe.yaml, plan and logs over and among the user's own files,
    and `--fresh` would rename the user's directory."""
    if not run_dir.absolute().name:
        raise ResumeError(f"--run-dir {run_dir}: the root directory cannot be a run directory; give a directory for this run")
    if run_dir.is_dir() and not RunDir(run_dir).is_run() and any(run_dir.iterdir()):
        flag, consequence = ("--fresh ", "it is not set aside") if fresh else ("", f"nothing is written there ({RECIPE_FILE}, {PLAN_FILE}, logs)")
        raise ResumeError(f"{flag}--run-dir {run_dir}: not a run directory (no {PLAN_FILE}) and not empty, so {consequence}; "
                          "give a new directory or an earlier run's")


def set_run_aside(run_dir: Path) -> Path:
    """`--fresh`: the old run is renamed, never deleted; `orch run` has refused what is not a run's
    (`check_run_dir`) before taking the directory."""
    target = run_dir.with_name(f"{run_dir.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
    os.rename(run_dir, target)
    return target
