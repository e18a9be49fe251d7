"""`orch run`'s look at the remote checkpoint tier before it plans a resume: on a machine whose run
directory has no checkpoint that verifies (a fresh machine, an empty node-local disk), the newest
checkpoint committed on the store (`--resume URL`, else `checkpoint.remote`) is downloaded into the
run's checkpoint directory and verified there; the ranks then resume from it as from any local one
(verifying it again before they unpickle it). Local checkpoints come first: the store is read only
when there is none. The other way, a local checkpoint newer than the store's newest (its upload was
killed or timed out) is uploaded before anything starts, or before `orch run` says the run is complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Callable

from orchestrator.checkpoint.spec import RemoteSpec
from orchestrator.errors import ResumeError
from orchestrator.rundir import events
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.shared.checkpoint import store


def check_remote_env(spec: RemoteSpec | None, environ: Mapping[str, str], command: str = "orch run") -> None:
    """The store's credentials come from this environment (a Slurm job inherits it from `orch submit`'s),
    by the names `checkpoint.remote.env` lists: a missing one fails here, before anything starts or is
    submitted, not in rank 0's first upload."""
    missing = [name for name in (spec.env if spec else []) if not environ.get(name)]
    if missing:
        raise ResumeError(f"checkpoint.remote.env names {', '.join(missing)}, not set here: export it before {command} "
                          "(the value is read from the environment and written nowhere)")


def fetch_remote_checkpoint(spec: RemoteSpec | None, url: str | None, checkpoint_dir: Path, say: Callable[[str], None]) -> bool:
    """Download the store's newest verified checkpoint into `checkpoint_dir`, called when it has none that
    verifies; whether one came. `url`: `--resume URL` (then the store must hold one); else the recipe's
    `checkpoint.remote` (none there: a fresh start)."""
    where = url or (spec.url if spec else None)
    if where is None:
        return False
    from orchestrator.shared.checkpoint.remote import RemoteTier

    try:
        fetched, refused = RemoteTier(where, spec.options if spec else {}).fetch_newest(checkpoint_dir)
    except Exception as exc:  # the store's client raises its own kinds (connection, permission, no such bucket)
        raise ResumeError(f"cannot read checkpoints from {where}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    for line in refused:
        say(line)
    if fetched:
        say(f"fetched {fetched.path.name} from {where}: {fetched.bytes / 1e6:.1f} MB in {fetched.seconds:.1f} s, verified")
        return True
    if refused:
        raise ResumeError(f"no checkpoint on {where} verifies (see above); nothing was started. "
                          "Pass --fresh to start over (the store's checkpoints are replaced as the run saves)")
    if url:
        raise ResumeError(f"--resume {url}: no committed checkpoint there (a checkpoint counts once its upload wrote its marker)")
    return False


def upload_if_newer(spec: RemoteSpec | None, checkpoint: Path, events_log: Path, say: Callable[[str], None]) -> None:
    """Send `checkpoint` (the run directory's newest verified one) when the store's newest committed tag
    is older: rank 0's upload of it was killed or ran out of time, and a complete run launches no rank
    that would send it again. It goes through rank 0's uploader (each file hashed right before it goes,
    the sizes listed back, the marker last, retries), whose event lands in `events_log` as rank 0's
    would. A store that cannot be read is said, not fatal: the run itself needs only the local tier."""
    if spec is None:
        return
    from orchestrator.shared.checkpoint.remote import RemoteTier
    from orchestrator.shared.checkpoint.upload import BackgroundUploader, one_line

    try:
        stored = RemoteTier(spec.url, spec.options).committed_tags()
    except Exception as exc:  # the store's client raises its own kinds (connection, permission, no such bucket)
        say(f"cannot read checkpoints from {spec.url} ({one_line(exc)}): {checkpoint.name} not uploaded")
        return
    if stored and store.step_of(stored[0]) >= store.step_of(checkpoint.name):
        return

    def record(event: BaseEvent) -> None:
        say(events.append(events_log, event).describe())

    say(f"{checkpoint.name} is not committed on {spec.url} (newest there: {stored[0] if stored else 'none'}): uploading it")
    uploader = BackgroundUploader(spec, record)
    uploader.submit(checkpoint)
    uploader.close()
