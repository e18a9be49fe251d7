"""Load a recipe: YAML with line numbers, one level or more of `base:`, dotted overrides, one validation.

Every problem is reported together, each with the file and line of the value (or the override)
that caused it and, for a mistyped key, the nearest valid one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import Location, Problem, RecipeError
from orchestrator.gates.task_code import task_code_problems
from orchestrator.hooks import hook_problems
from orchestrator.recipe.document import not_text, printable, read_document
from orchestrator.model.remote_code import remote_code_problems
from orchestrator.recipe.schema import Recipe
from orchestrator.spec import RuleViolation

COMMAND_LINE = "command line"


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus where each of its keys was written, for errors raised later (planning)."""

    recipe: Recipe
    locations: dict[str, Location] = field(default_factory=dict)
    sources: tuple[Path, ...] = ()

    def locate(self, path: str) -> Location | None:
        return locate(self.locations, path)

    def problem(self, path: str, message: str) -> Problem:
        return Problem(path, message, self.locate(path))

    @property
    def hash(self) -> str:
        return recipe_hash(self.recipe)


def recipe_hash(recipe: Recipe) -> str:
    """What the run trains: a sweep section only says how `orch sweep` varies it, a dashboard group
    where its trials show, and `fault_tolerance` how the run recovers from faults (a recipe whose
    timeouts change still resumes its run)."""
    canonical = json.dumps(recipe.model_dump(mode="json", exclude={"sweep": True, "tracking": {"group"}, "fault_tolerance": True}),
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_recipe(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    path = Path(path)
    data, locations, sources = _read_with_bases(path, ())
    problems: list[Problem] = []
    for override in overrides:
        problems.extend(_apply_override(data, locations, override))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, locations))
        raise RecipeError(problems) from None
    if problems:
        raise RecipeError(problems)
    loaded = LoadedRecipe(recipe, locations, sources)
    hooks = hook_problems(recipe.gates.content.classifier, recipe.tracking.custom)  # code the recipe names: marked hooks only
    # Pretrained directories whose own code transformers would run; harness task code not declared trusted.
    code = remote_code_problems(recipe) + task_code_problems(recipe.gates.evaluation)
    missing = _missing_paths(loaded) + [loaded.problem(field, why) for field, why in hooks + code]
    missing = missing or _unreadable_sources(loaded)
    if missing:
        raise RecipeError(missing)
    return loaded


def locate(locations: dict[str, Location], path: str) -> Location | None:
    """Where `path` was written; else where a key below it was (an override that added it); else its
    nearest written ancestor (a missing key is reported at its section)."""
    if path in locations:
        return locations[path]
    below = next((loc for key, loc in locations.items() if key.startswith(path + ".")), None) if path else None
    if below:
        return below
    parts = path.split(".") if path else []
    while parts:
        parts.pop()
        found = locations.get(".".join(parts))
        if found:
            return found
    return None


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, Location], tuple[Path, ...]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError([Problem("base", f"recipes extend each other in a cycle: {cycle}", Location(str(path)))])
    if not path.is_file():
        where = Location(str(chain[-1])) if chain else None
        what = "is a directory, not a recipe file" if path.is_dir() else "recipe file not found"
        raise RecipeError([Problem("base" if chain else "", f"{what}: {path}", where)])
    data, locations = _parse_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data, locations, (path,)
    if not isinstance(base, str):
        raise RecipeError([Problem("base", "`base` must be a path to another recipe", locations.get("base"))])
    base_data, base_locations, base_sources = _read_with_bases(path.parent / base, (*chain, resolved))
    locations.pop("base", None)
    return _deep_merge(base_data, data), {**base_locations, **locations}, (*base_sources, path)


def _parse_yaml(path: Path) -> tuple[dict, dict[str, Location]]:
    where = Location(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError([Problem("", f"not a text file (byte {exc.start} is not UTF-8): is this really a recipe?", where)]) from None
    except OSError as exc:
        raise RecipeError([Problem("", f"cannot read the recipe: {exc.strerror}", where)]) from None
    try:
        data, root = read_document(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([Problem("", f"not valid YAML: {reason}", Location(str(path), line))]) from None
    except RecursionError:
        raise RecipeError([Problem("", "not a recipe: its YAML is nested too deeply to read", where)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([Problem("", "a recipe must be a mapping of sections", Location(str(path), 1))])
    locations: dict[str, Location] = {}
    _collect_lines(root, "", str(path), locations)
    return data, locations


def _collect_lines(node: yaml.Node | None, prefix: str, source: str, out: dict[str, Location]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        out[key] = Location(source, key_node.start_mark.line + 1)
        _collect_lines(value_node, key, source, out)


def _deep_merge(base: dict, child: dict) -> dict:
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(data: dict, locations: dict[str, Location], override: str) -> list[Problem]:
    where = Location(f"{COMMAND_LINE} `{printable(override)}`")
    why = not_text(override)
    if why:
        return [Problem("", why, where)]
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        return [Problem("", "an override is written `section.key=value`", where)]
    parts = key.split(".")
    if not all(part.strip() == part and part for part in parts):
        return [Problem("", f"malformed override `{printable(override)}`: its key has an empty or spaced part; write `section.key=value`", where)]
    try:
        value = read_document(raw, where.source, prefix=key, lines=False)[0] if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        return [Problem(key, "its value is nested too deeply to read", where)]
    except RecipeError as exc:
        return exc.problems
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return [Problem(key, f"`{part}` is a value, not a section, so `{key}` cannot be set", where)]
        node = child
    node[parts[-1]] = value
    for known in [k for k in locations if k == key or k.startswith(key + ".")]:
        del locations[known]
    locations[key] = where
    return []


def _problems_from(exc: ValidationError, locations: dict[str, Location]) -> list[Problem]:
    """One problem per offending key: the members of a union that all rejected a value become one."""
    by_path: dict[str, list[str]] = {}
    for error in exc.errors():
        path, message = _describe(error)
        by_path.setdefault(path, []).append(message)
    return [Problem(path, "; or ".join(dict.fromkeys(messages)), locate(locations, path)) for path, messages in by_path.items()]


def _describe(error: dict) -> tuple[str, str]:
    loc, model = _field_path(Recipe, [str(part) for part in error["loc"]])
    violation = (error.get("ctx") or {}).get("error")
    if isinstance(violation, RuleViolation):
        return ".".join([*loc, violation.key]), str(violation)
    path = ".".join(loc)
    if error["type"] == "extra_forbidden":
        return path, "unknown key" + _did_you_mean(loc[-1], list(model.model_fields) if model else [])
    if error["type"] == "literal_error":
        allowed = [str(a) for a in _literal_values(model, loc[-1])]
        return path, f"{error['input']!r} is not one of {', '.join(allowed)}" + _did_you_mean(str(error["input"]), allowed)
    if error["type"] == "union_tag_invalid":
        # A discriminated section (`distributed`): the tag is a key of its own, e.g. `backend`.
        tags = [_tag_of(member) for member in _members(model, loc[-1])]
        tag, allowed = error["ctx"]["tag"], [value for _, value in tags]
        return f"{path}.{tags[0][0]}", f"{tag!r} is not one of {', '.join(allowed)}" + _did_you_mean(tag, allowed)
    if error["type"] == "missing":
        return path, "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return path, message[:1].lower() + message[1:]


def _field_path(model: type[BaseModel], loc: list[str]) -> tuple[list[str], type[BaseModel] | None]:
    """The recipe keys in a pydantic error location, without the union-member tags pydantic adds, and
    the section model the last key belongs to (the tagged member, for a discriminated union)."""
    path: list[str] = []
    current: type[BaseModel] | None = model
    owner: type[BaseModel] | None = model
    members: list[type[BaseModel]] = []
    keyed = False
    for part in loc:
        if part.isdigit() or keyed:  # an item of a list (data.sources.0.weight), a key of a dict (sweep.parameters.<key>)
            path.append(part)
            keyed = False
            continue
        if current is None:
            continue
        tagged = next((m for m in members if _tag_of(m)[1] == part), None)
        if tagged is not None:
            current, members = tagged, []
            continue
        if part not in current.model_fields:
            if current.model_config.get("extra") == "forbid" and not path[-1:] == [part]:
                path.append(part)
                owner = current
            current = None
            continue
        path.append(part)
        owner, members = current, _members(current, part)
        keyed = any(typing.get_origin(t) is dict for t in annotation_members(current.model_fields[part].annotation))
        current = members[0] if members else None
    return path, owner


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean `{close[0]}`?" if close else ""


def _members(model: type[BaseModel] | None, key: str) -> list[type[BaseModel]]:
    """The section models a key may hold: one, or the members of a union (of a dict's values: the sweep's parameters)."""
    info = model.model_fields.get(key) if model else None
    if info is None:
        return []
    held = [value for t in annotation_members(info.annotation)
            for value in (annotation_members(typing.get_args(t)[1]) if typing.get_origin(t) is dict else [t])]
    return [t for t in held if isinstance(t, type) and issubclass(t, BaseModel)]


def _tag_of(member: type[BaseModel]) -> tuple[str, str]:
    """The (key, value) that selects a member of a discriminated union: its one single-valued Literal field."""
    for name, info in member.model_fields.items():
        values = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
        if len(values) == 1:
            return name, str(values[0])
    return "", ""


def _literal_values(model: type[BaseModel] | None, key: str) -> list[Any]:
    info = model.model_fields.get(key) if model else None
    if info is None:
        return []
    return [arg for t in annotation_members(info.annotation) if typing.get_origin(t) is typing.Literal for arg in typing.get_args(t)]


def annotation_members(annotation: Any) -> list[Any]:
    """Unwrap Optional/Union/Annotated into their members; everything else is itself."""
    if typing.get_origin(annotation) is typing.Annotated:
        return annotation_members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in annotation_members(arg)]
    if typing.get_origin(annotation) is list:
        return annotation_members(typing.get_args(annotation)[0])
    return [annotation]


def _unreadable_sources(loaded: LoadedRecipe) -> list[Problem]:
    """Each text source's files and the first of them, read as far as its text field (instruction data
    names other fields), and the first row of each decontamination file: a bounded read each."""
    from orchestrator.data.corpus import first_file_problem
    from orchestrator.data.ngrams import eval_file_problem

    data = loaded.recipe.data
    prefixes = [f"data.sources.{i}." for i in range(len(data.sources))] if data.sources else ["data."]
    found = [] if data.instruction is not None else [
        (prefix + problem[0], problem[1]) for prefix, source in zip(prefixes, data.mixture()) if (problem := first_file_problem(source))]
    found += [(f"data.decontaminate.{i}", why) for i, path in enumerate(data.decontaminate) if (why := eval_file_problem(path))]
    return [loaded.problem(key, why) for key, why in found]


def _missing_paths(loaded: LoadedRecipe) -> list[Problem]:
    """Paths the recipe points at must exist, and be what they are read as, before anything is planned
    or launched: data is read from regular files (a FIFO blocks its reader, `/dev/zero` never ends)."""
    from orchestrator.data.files import path_problem

    recipe = loaded.recipe
    wanted = {
        "data.path": (recipe.data.path, "file or directory"),
        "data.tokenizer.path": (recipe.data.tokenizer.path, "directory"),
        "model.path": (recipe.model.path, "directory"),
        **{f"data.sources.{i}.path": (source.path, "file or directory") for i, source in enumerate(recipe.data.sources)},
        **{f"data.decontaminate.{i}": (path, "file") for i, path in enumerate(recipe.data.decontaminate)},
    }
    return [loaded.problem(key, why) for key, (value, kind) in wanted.items() if value is not None and (why := path_problem(Path(value), kind))]
