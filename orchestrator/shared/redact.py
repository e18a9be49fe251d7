"""Secrets written inline in a recipe, found and replaced before the recipe is recorded or shown.

The planner redacts the recipe it plans from, so every output built from the plan (`orch plan`
text and JSON, the sbatch script, the run's `recipe.yaml` and, through it, the release's copy, the
dashboards' config and the checkpoint manifests) holds `REDACTED` where the value was. The
secret's proper path is the environment: `slurm.pass_env` names the variables a job needs, and
their values never enter a file.

Known shapes: credentials in a URI (`scheme://user:password@host`), an assignment to a name that
looks like a secret (`export HF_TOKEN=...`), a secret given as an option (`--token X`,
`wandb login KEY`), and the common token prefixes (`hf_`, `sk-`, `ghp_` and GitHub's siblings).
A bare 40-digit hex string (a W&B key's shape) is a secret only after `wandb login` or assigned
to such a name: elsewhere it is far more often a git commit id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.recipe.schema import Recipe

MARK = "REDACTED"
SECRET_WORDS = {"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS"}

URI_PASSWORD = re.compile(r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)(?P<secret>[^/@\s]+)(?=@)")
ASSIGNMENT = re.compile(r"(?<![\w-])(?P<keep>(?P<name>[A-Za-z_][A-Za-z0-9_]*)=)(?P<secret>'[^']*'|\"[^\"]*\"|[^\s;&|]+)")
OPTION = re.compile(r"(?P<keep>(?:--(?:token|password|api-key|key)[= ]|\bwandb login (?:--relogin )?))(?P<secret>[^\s;&|-][^\s;&|]*)")
TOKEN = re.compile(r"(?P<keep>)(?P<secret>\b(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}))")


@dataclass(frozen=True)
class Finding:
    """Where a secret was found (a dotted recipe path) and of which shape; never the value."""

    path: str
    kind: str

    def warning(self) -> str:
        return (f"{self.path} holds {self.kind} inline: it is written nowhere (records and scripts show {MARK}), so the run "
                "never sees it; put it in an environment variable and list that variable's name in slurm.pass_env")


def _secret_name(name: str) -> bool:
    return any(word in SECRET_WORDS for word in name.upper().split("_"))


def _is_reference(value: str) -> bool:
    """`$OTHER`, `$(cat file)` or a path: a pointer to the secret, not the secret itself."""
    return value.strip("'\"").startswith(("$", "/", "~"))


def redact_text(text: str) -> tuple[str, list[str]]:
    """`text` with every known secret shape replaced by MARK, and the shapes found."""
    kinds: list[str] = []

    def replace(kind: str):
        def sub(match: re.Match) -> str:
            if match["secret"] == MARK:
                return match[0]
            kinds.append(kind)
            return match["keep"] + MARK
        return sub

    def assignment(match: re.Match) -> str:
        if not _secret_name(match["name"]) or _is_reference(match["secret"]):
            return match[0]
        return replace(f"a value for {match['name']}")(match)

    text = URI_PASSWORD.sub(replace("a password in a URI"), text)
    text = ASSIGNMENT.sub(assignment, text)
    text = OPTION.sub(replace("a secret passed as an option"), text)
    text = TOKEN.sub(replace("an access token"), text)
    return text, kinds


def _walk(value, path: str, findings: list[Finding]):
    if isinstance(value, str):
        clean, kinds = redact_text(value)
        findings.extend(Finding(path, kind) for kind in kinds)
        return clean
    if isinstance(value, dict):
        return {key: _walk(item, f"{path}.{key}" if path else key, findings) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, f"{path}[{index}]", findings) for index, item in enumerate(value)]
    return value


def redact_tree(tree: dict) -> tuple[dict, list[Finding]]:
    """A recipe as a dict (`model_dump(mode="json")`), every inline secret replaced by MARK."""
    findings: list[Finding] = []
    return _walk(tree, "", findings), findings


def redact_recipe(recipe: Recipe) -> tuple[Recipe, list[Finding]]:
    """The recipe with every inline secret replaced by MARK (the same recipe when there is none)."""
    clean, findings = redact_tree(recipe.model_dump(mode="json"))
    return (Recipe.model_validate(clean) if findings else recipe), findings
