"""The `slurm` section: what `orch submit` asks the scheduler for, and how preemption is handled.

Every value that lands in an `#SBATCH` line is checked against what Slurm accepts: sbatch reads
those lines up to the first line of shell, so a newline in a value would become shell in the job
script, and a space would pass sbatch another option (`partition="gpu --account=someone-else"`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field

from orchestrator.spec import Spec

NAME_LIST = r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*"
# minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes, days-hours:minutes:seconds
TIME = r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE"
MEM = r"\d+[KMGTkmgt]?"
# Node features joined by & (and), | (or), [..] (matching or), *N (count), ! (not).
CONSTRAINT = r"[A-Za-z0-9_.:&|,*!()\[\]-]+"
DIRECTIVE = re.compile(r"(#SBATCH )?--[a-z][a-z0-9-]*(=[^\s\"'\\]+)?")
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _matching(pattern: str, what: str, example: str):
    """A check that the whole value matches `pattern`, with a message that says how to fix it."""
    compiled = re.compile(pattern)

    def check(value: str | None) -> str | None:
        if value is not None and not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {what} (e.g. {example}); no spaces, quotes or line breaks")
        return value

    return AfterValidator(check)


def _directive(value: str) -> str:
    if not DIRECTIVE.fullmatch(value):
        raise ValueError(f"{value!r} is not one sbatch option: write `--option` or `--option=value`, long form, "
                         "with no spaces, quotes or line breaks in the value")
    return value


def _one_line(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} holds a line break or control character: give one line per list item")
    return value


class SlurmSpec(Spec):
    """Nodes come from `distributed.nodes`; one launcher task per node starts that node's ranks.

    `signal` defaults to USR2: NCCL may install its own SIGUSR1 handler, which is why submitit
    chose USR2 too. Slurm sends it `signal_grace_s` before the time limit (raised to twice the
    longest measured checkpoint commit when the run directory has one).

    Secrets go through `pass_env`, by name: the job inherits them from the environment `orch
    submit` runs in (sbatch's default `--export=ALL`), and no file holds their values.
    """

    partition: Annotated[Optional[str], _matching(NAME_LIST, "a partition name or comma-separated list", "gpu or gpu,debug")] = None
    account: Annotated[Optional[str], _matching(NAME_LIST, "an account name", "proj42")] = None
    qos: Annotated[Optional[str], _matching(NAME_LIST, "a QOS name", "high")] = None
    time_limit: Annotated[Optional[str], _matching(TIME, "a Slurm time limit", "04:00:00, 90 or 1-00:00:00")] = Field(
        None, description="Slurm time format, e.g. 04:00:00 or 1-00:00:00")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: Optional[int] = Field(None, gt=0)
    mem: Annotated[Optional[str], _matching(MEM, "a memory size", "64G or 512000M")] = Field(None, description="per node, e.g. 64G")
    constraint: Annotated[Optional[str], _matching(CONSTRAINT, "a node feature expression", "h100 or a100&ib")] = None
    exclusive: bool = False
    extra_directives: list[Annotated[str, AfterValidator(_directive)]] = []
    modules: list[Annotated[str, AfterValidator(_one_line)]] = []
    setup: list[Annotated[str, AfterValidator(_one_line)]] = Field([], description="shell lines run before training, e.g. module or cd commands")
    pass_env: list[Annotated[str, _matching(ENV_NAME, "an environment variable's name", "WANDB_API_KEY")]] = Field(
        [], description="names of environment variables the job needs (API keys, tokens); set them before `orch submit`")
    venv: Optional[Path] = Field(None, description="virtualenv to activate on the nodes (default: the submitting one)")
    signal: Literal["USR1", "USR2", "TERM"] = "USR2"
    signal_grace_s: int = Field(120, gt=0)
    max_requeues: int = Field(3, ge=0)
