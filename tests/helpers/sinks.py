"""Tracking sinks the tests plug in through `tracking.custom` (the extension point users have, marked as users mark theirs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.hooks import tracking_sink


@tracking_sink
class Exploding:
    """A dashboard that is down: every call raises."""

    name = "exploding"

    def open(self, identity):
        raise ConnectionError("dashboard unreachable")

    def log(self, metrics, step):
        raise ConnectionError("dashboard unreachable")

    def artifact(self, path, name):
        raise ConnectionError("dashboard unreachable")

    def close(self):
        raise ConnectionError("dashboard unreachable")


@tracking_sink
class Recording:
    """Appends every call to the file named by RECORDING_SINK_FILE (one JSON line per call)."""

    name = "recording"

    def __init__(self):
        self.path = Path(os.environ["RECORDING_SINK_FILE"])

    def _write(self, **entry):
        with self.path.open("a") as out:
            out.write(json.dumps(entry, default=str) + "\n")

    def open(self, identity):
        self._write(call="open", ids=identity.ids)
        return {"recording_id": identity.ids.get("recording_id", "rec-1")}

    def log(self, metrics, step):
        self._write(call="log", step=step, metrics=metrics)

    def artifact(self, path, name):
        self._write(call="artifact", path=str(path), name=name)

    def close(self):
        self._write(call="close")
