"""A release's manifest (`release.json`) and `orch verify DIR`: the directory holds exactly what the
manifest lists, byte for byte, and everything a release must have.

The tree is walked without following links and any link is refused: a file swapped for a link
pointing outside the release, or a linked directory, would otherwise verify while serving other
bytes. Each listed file is opened as `orchestrator.shared.filetree` opens one (a FIFO, a device or a hard
link swapped in is refused, not read) and its size compared before it is hashed. Names in the
manifest must stay inside the release; names in a verdict are escaped, so one cannot forge a line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator

from orchestrator.errors import ReleaseInvalid
from orchestrator.shared.filetree import Refused, digest_file, inside, read_file, read_json, shown, walk
from orchestrator.rundir.layout import RELEASE_MANIFEST

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
"""One of these: the whole model, or the index of its shards."""
REQUIRED_FILES = ("config.json", "tokenizer_config.json", "README.md", "recipe.yaml", "gates.json", "export.json")
"""What `orch release` always writes besides the weights: loadable model, model card, provenance."""
MAX_MANIFEST_BYTES = 64 << 20
"""Far above a release manifest's or a safetensors index's size: a larger one is not read."""


class ReleaseManifest(BaseModel):
    """`release.json`: where the release came from, and the sha256 and size of every other file in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str
    checkpoint_hash: str
    recipe_hash: str
    data_manifest_sha256: str | None
    gates_passed: bool
    files: dict[str, str]
    sizes: dict[str, NonNegativeInt] = Field(default_factory=dict)
    """Bytes of each file: compared before a file is hashed. Releases made before it was recorded have none."""

    @field_validator("files")
    @classmethod
    def _inside_the_release(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            if not inside(name):
                raise ValueError(f"{name!r} is not a path inside the release")
        return files


def describe(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The sha256 and the size of every file under `path`, for its manifest."""
    files = walk(path).files
    return {name: digest_file(path, name, hashlib.sha256()) for name in sorted(files)}, dict(sorted(files.items()))


def read_manifest(path: Path) -> ReleaseManifest:
    try:
        content = read_file(path, RELEASE_MANIFEST, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ReleaseInvalid([f"{shown(str(path))}: not a release (no {RELEASE_MANIFEST})"]) from None
    except Refused as exc:
        raise ReleaseInvalid([f"{shown(str(path))}: not a release ({RELEASE_MANIFEST}: {exc})"]) from None
    except OSError as exc:
        raise ReleaseInvalid([f"{shown(str(path))}: not a release ({exc.strerror})"]) from None
    try:
        return ReleaseManifest.model_validate_json(content)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        raise ReleaseInvalid([f"{RELEASE_MANIFEST} is not a release manifest: {shown(where)}: {shown(error['msg'])}"]) from None


def _walk(path: Path) -> tuple[set[str], set[str], list[str]]:
    """(regular files, what else is there, problems: links, special files, empty directories), by relative name."""
    tree = walk(path)
    problems = [f"{shown(name)}/: an empty directory, not in {RELEASE_MANIFEST}" for name in tree.empty_dirs]
    problems += [f"{shown(name)}: a symbolic link (a release holds regular files only)" for name in tree.links]
    problems += [f"{shown(name)}: {what}" for name, what in tree.others]
    return set(tree.files), {*tree.links, *(name for name, _ in tree.others)}, problems


def _missing_required(listed: set[str]) -> list[str]:
    problems = [f"{name}: a release must have it, and {RELEASE_MANIFEST} does not list it"
                for name in REQUIRED_FILES if name not in listed]
    if not listed & set(WEIGHTS):
        problems.append(f"{WEIGHTS[0]}: a release must have its weights, and {RELEASE_MANIFEST} lists none")
    return problems


def _unlisted_shards(path: Path, listed: set[str]) -> list[str]:
    """Sharded weights: every shard the index names must be in the release."""
    try:
        weight_map = read_json(path, WEIGHTS[1], MAX_MANIFEST_BYTES)["weight_map"]
        shards = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{WEIGHTS[1]}: not a safetensors index ({type(exc).__name__}: {shown(str(exc))})"]
    if not all(isinstance(name, str) for name in shards):
        return [f"{WEIGHTS[1]}: not a safetensors index (its weight_map names a shard by something other than a file name)"]
    return [f"{shown(name)}: a weight shard the index names, not in {RELEASE_MANIFEST}" for name in sorted(shards - listed)]


def _file_problem(path: Path, name: str, digest: str, size: int | None) -> str | None:
    try:
        found = digest_file(path, name, hashlib.sha256(), size)
    except FileNotFoundError:
        return "missing"
    except (Refused, OSError) as exc:
        return str(exc)
    return None if found == digest else "sha256 differs"


def verify_release(path: Path) -> ReleaseManifest:
    """The release's manifest, once every file matches it; raises ReleaseInvalid with one line per problem."""
    manifest = read_manifest(path)
    present, other, problems = _walk(path)
    for name, digest in manifest.files.items():
        if name in other:
            continue  # reported already: a link or not a regular file
        problem = _file_problem(path, name, digest, manifest.sizes.get(name)) if name in present else "missing"
        if problem:
            problems.append(f"{shown(name)}: {problem}")
    problems += [f"{shown(name)}: not in {RELEASE_MANIFEST}" for name in sorted(present - set(manifest.files) - {RELEASE_MANIFEST})]
    problems += _missing_required(set(manifest.files))
    if WEIGHTS[1] in manifest.files and not problems:
        problems += _unlisted_shards(path, set(manifest.files))
    if problems:
        raise ReleaseInvalid(problems)
    return manifest
