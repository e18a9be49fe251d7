"""The `checkpoint` section: where checkpoints go, how often they are taken, and which are kept,
on the run directory's filesystem and, with `remote`, on object storage too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator, model_serializer, model_validator

from orchestrator.slurm.spec import ENV_NAME, _matching
from orchestrator.spec import RuleViolation, Spec

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.+)")
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential", "profile")


class RemoteSpec(Spec):
    """`checkpoint.remote`: a copy of each committed checkpoint under `url` (any fsspec URL, one prefix
    per run: `<url>/step-00001000/`), uploaded in the background; `checkpoint.remote: s3://b/run-a`
    is short for `checkpoint.remote.url`. Credentials come from the environment only: `env` names
    the variables the store's client reads (`orch run` and `orch submit` check they are set before
    anything starts, and a Slurm job's script checks them again, as `slurm.pass_env`'s; their values
    are never written down); `options` are fsspec's storage options (`endpoint_url`
    for a store other than AWS), and may not name a credential."""

    url: str
    env: list[Annotated[str, _matching(ENV_NAME, "an environment variable's name", "AWS_ACCESS_KEY_ID")]] = Field(default_factory=list)
    options: dict[str, Union[str, int, float, bool]] = Field(default_factory=dict)
    keep_last: Optional[int] = Field(None, ge=1)
    """None: every checkpoint stays on the store (besides `keep_every`'s)."""
    keep_every: Optional[int] = Field(None, gt=0)
    timeout_s: float = Field(240, gt=0)
    """The longest the run's end (or a stop) waits for its last upload; past it the run ends and says so.
    The ranks wait in their checkpoint phase meanwhile: keep it under the watchdog's timeout for that
    phase (`fault_tolerance.timeouts.checkpoint_s`; with `auto`, at least 300 s)."""
    retries: int = Field(4, ge=0)
    """Further tries of a failed upload, 2, 4, 8... seconds apart."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        from fsspec.registry import known_implementations, registry

        match = _URL.fullmatch(url)
        if not match:
            raise ValueError("is not a URL: give one such as s3://bucket/run-name (file:///path for a local directory)")
        scheme = match["scheme"].lower()
        if scheme not in known_implementations and scheme not in registry:
            raise ValueError(f"{scheme}:// is no storage fsspec knows (e.g. s3, gs, az, file)")
        if "@" in match["rest"].split("/", 1)[0]:
            raise ValueError("holds credentials: give them by environment variable name in checkpoint.remote.env")
        return url.rstrip("/")

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, options: dict) -> dict:
        secret = sorted(name for name in options if any(word in name.lower() for word in _CREDENTIAL_WORDS))
        if secret:
            raise ValueError(f"{', '.join(secret)}: credentials go by environment variable name in checkpoint.remote.env, "
                             "never into the recipe (it is written to the run directory)")
        return options


class CheckpointSpec(Spec):
    """`dir` defaults to `<run dir>/checkpoints`; a final checkpoint is always written.

    `interval_steps: auto` derives the interval from the measured save stall and `mtbf_hours`
    (Young/Daly: sqrt(2 x stall x MTBF)).
    """

    dir: Optional[Path] = None
    interval_steps: Union[int, Literal["auto"], None] = None
    interval_minutes: Optional[float] = Field(None, gt=0)
    mtbf_hours: Optional[float] = Field(None, gt=0)
    keep_last: int = Field(3, ge=1)
    keep_every: Optional[int] = Field(None, gt=0)
    async_save: bool = True
    commit_timeout_s: float = Field(600, gt=0)
    remote: Optional[RemoteSpec] = None
    local_dir: Optional[Path] = None
    """The fast local tier: node-local storage (/dev/shm, an NVMe path) that holds the run's newest
    `keep_last` checkpoints (1: the newest only) in `<local_dir>/<run dir's name>-<hash of its path>/`,
    while the older ones live on the store (`remote`, required with it). A resume takes the newest
    there first, else the store's newest, downloaded there. One node only: the other nodes' shards
    are not on this one."""

    @field_validator("remote", mode="before")
    @classmethod
    def _url_alone(cls, value: object) -> object:
        return {"url": value} if isinstance(value, str) else value

    @model_serializer(mode="wrap")
    def _without_unset_remote(self, handler) -> dict:
        """A recipe without `remote` (or `local_dir`) reads, hashes and records exactly as before the field existed."""
        data = handler(self)
        for name in ("remote", "local_dir"):
            if getattr(self, name) is None:
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _auto_needs_mtbf(self) -> "CheckpointSpec":
        if self.interval_steps == "auto" and self.mtbf_hours is None:
            raise RuleViolation("mtbf_hours", "`interval_steps: auto` needs `mtbf_hours`, the expected time between failures")
        if isinstance(self.interval_steps, int) and self.interval_steps < 1:
            raise RuleViolation("interval_steps", "interval_steps must be at least 1, or `auto`")
        if self.local_dir is not None:
            self._check_local_tier()
        return self

    def _check_local_tier(self) -> None:
        if self.remote is None:
            raise RuleViolation("local_dir", "local_dir keeps only the newest checkpoint, the older ones live on the store: "
                                             "set checkpoint.remote too")
        if self.dir is not None:
            raise RuleViolation("local_dir", "give checkpoint.dir or checkpoint.local_dir, not both (local_dir is where checkpoints go)")
        if self.keep_every is not None:
            raise RuleViolation("keep_every", "with local_dir the older checkpoints live on the store: "
                                              "keep every n-th step there (checkpoint.remote.keep_every)")
