"""What every event of `events.jsonl` has (`orchestrator.rundir.rows` lists the kinds): its name, its
time, the line a person sees for it, and reading by key, as the JSON object it is on disk.

Histories outlive the code that wrote them, so reading is lenient where it can be: a field added
after a kind's first version, or one a hand-made history leaves out, reads as None, and fields this
version does not know ride along (`extra="allow"`).
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict


class BaseEvent(BaseModel):
    """What every event has: its kind's name and the time it was written. Read strictly (a JSON `true`
    is no step, "3" no count); built leniently by the writers (a numpy figure is a number). Events also
    read by key (`e["step"]`, `e.get("job_id")`, `"saved" in e`) for scripts, benchmarks and tests
    that handle them as the JSON objects they are on disk."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: str
    time: Optional[float] = None
    """Seconds since the epoch; `events.append` stamps it when the event is written."""

    def describe(self) -> str | None:
        """The line a person watching the run sees for this event; None for most kinds."""
        return None

    def line(self) -> dict:
        """The fields given (with the name and time first), as written: a reader tells a field an
        earlier version did not write from one written as null."""
        rest = self.model_dump(mode="json", exclude_unset=True, exclude={"event", "time"})
        return {"event": self.event, "time": self.time, **rest}

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields and key not in (self.model_extra or {}):
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __contains__(self, key: str) -> bool:
        return key in ("event", "time") or key in self.model_fields_set or key in (self.model_extra or {})

    def keys(self):
        return self.line().keys()

    def items(self):
        return self.line().items()
