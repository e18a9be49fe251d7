"""A release's manifest (`release.json`) and `orch verify DIR`: the directory holds exactly what the
manifest lists, byte for byte, and everything a release must have.

The tree is walked without following links and any link is refused: a file swapped for a link
pointing outside the release, or a linked directory, would otherwise verify while serving other
bytes. Names in the manifest must stay inside the release.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from orchestrator.errors import ReleaseInvalid
from orchestrator.filetree import inside, walk
from orchestrator.rundir.layout import RELEASE_MANIFEST

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
"""One of these: the whole model, or the index of its shards."""
REQUIRED_FILES = ("config.json", "tokenizer_config.json", "README.md", "recipe.yaml", "gates.json", "export.json")
"""What `orch release` always writes besides the weights: loadable model, model card, provenance."""


class ReleaseManifest(BaseModel):
    """`release.json`: where the release came from, and the sha256 of every other file in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str
    checkpoint_hash: str
    recipe_hash: str
    data_manifest_sha256: str | None
    gates_passed: bool
    files: dict[str, str]

    @field_validator("files")
    @classmethod
    def _inside_the_release(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            if not inside(name):
                raise ValueError(f"{name!r} is not a path inside the release")
        return files


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> ReleaseManifest:
    manifest = path / RELEASE_MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        raise ReleaseInvalid([f"{path}: not a release (no {RELEASE_MANIFEST})"])
    try:
        return ReleaseManifest.model_validate_json(manifest.read_bytes())
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        raise ReleaseInvalid([f"{RELEASE_MANIFEST} is not a release manifest: {where}: {error['msg']}"]) from None


def _walk(path: Path) -> tuple[set[str], set[str], list[str]]:
    """(regular files, links, problems: links, special files, empty directories), by relative name."""
    tree = walk(path)
    problems = [f"{name}/: an empty directory, not in {RELEASE_MANIFEST}" for name in tree.empty_dirs]
    problems += [f"{name}: a symbolic link (a release holds regular files only)" for name in tree.links]
    problems += [f"{name}: not a regular file" for name in tree.special]
    return tree.files, set(tree.links), problems


def _missing_required(listed: set[str]) -> list[str]:
    problems = [f"{name}: a release must have it, and {RELEASE_MANIFEST} does not list it"
                for name in REQUIRED_FILES if name not in listed]
    if not listed & set(WEIGHTS):
        problems.append(f"{WEIGHTS[0]}: a release must have its weights, and {RELEASE_MANIFEST} lists none")
    return problems


def _unlisted_shards(path: Path, listed: set[str]) -> list[str]:
    """Sharded weights: every shard the index names must be in the release."""
    try:
        shards = set(json.loads((path / WEIGHTS[1]).read_text())["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{WEIGHTS[1]}: not a safetensors index ({type(exc).__name__}: {exc})"]
    return [f"{name}: a weight shard the index names, not in {RELEASE_MANIFEST}" for name in sorted(shards - listed)]


def verify_release(path: Path) -> ReleaseManifest:
    """The release's manifest, once every file matches it; raises ReleaseInvalid with one line per problem."""
    manifest = read_manifest(path)
    present, links, problems = _walk(path)
    for name, digest in manifest.files.items():
        if name in links:
            continue  # reported as a link already
        if name not in present:
            problems.append(f"{name}: missing")
        elif sha256(path / name) != digest:
            problems.append(f"{name}: sha256 differs")
    problems += [f"{name}: not in {RELEASE_MANIFEST}" for name in sorted(present - set(manifest.files) - {RELEASE_MANIFEST})]
    problems += _missing_required(set(manifest.files))
    if WEIGHTS[1] in manifest.files and not problems:
        problems += _unlisted_shards(path, set(manifest.files))
    if problems:
        raise ReleaseInvalid(problems)
    return manifest
