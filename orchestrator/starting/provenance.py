"""What a run was made from: code version, library versions, recipe hash and data manifest."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from orchestrator import __version__
from orchestrator.data.prepare import read_sources, sources_content
from orchestrator.rundir.records import CodeVersion, ProvenanceRecord
from orchestrator.shared.data.prepared import PreparedData, manifest_content

LIBRARIES = ("torch", "deepspeed", "transformers", "datasets", "tokenizers", "numpy", "pydantic")


def provenance(recipe_hash: str, data: PreparedData, sources: list[Path]) -> ProvenanceRecord:
    """`data` is recorded as its manifest with its source files listed beside it (`files`), so the
    hashes survive a cleared data cache."""
    return ProvenanceRecord(
        orchestrator=CodeVersion(version=__version__, git_commit=_git_commit(), git_dirty=_git_dirty()),
        python=platform.python_version(),
        platform=platform.platform(),
        libraries={name: _version(name) for name in LIBRARIES},
        recipe_hash=recipe_hash,
        recipe_sources=[str(p) for p in sources],
        data={**manifest_content(data.manifest), "files": sources_content(read_sources(data.dir))},
    )


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_commit() -> str | None:
    return _git("rev-parse", "HEAD")


def _git_dirty() -> bool | None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)
