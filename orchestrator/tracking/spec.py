"""The `tracking` section: which dashboards mirror the run directory.

The run directory stays the source of truth (`metrics.jsonl`, `events.jsonl`, the energy bill,
gate reports); the sinks chosen here receive a copy, several at once. A sink that fails is
reported once and dropped; training never waits for one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from orchestrator.spec import Spec


class WandbSpec(Spec):
    """Offline by default: no account or network; `wandb sync <run>/wandb/offline-run-*` uploads later."""

    enabled: bool = False
    project: str = "orchestrator"
    entity: Optional[str] = None
    mode: Literal["offline", "online"] = "offline"


class TensorBoardSpec(Spec):
    enabled: bool = False
    dir: Optional[Path] = Field(None, description="default <run dir>/tensorboard")


class MlflowSpec(Spec):
    enabled: bool = False
    tracking_uri: Optional[str] = Field(None, description="default: a SQLite store in the run directory (mlflow.db)")
    experiment: str = "orchestrator"


class TrackingSpec(Spec):
    wandb: WandbSpec = WandbSpec()
    tensorboard: TensorBoardSpec = TensorBoardSpec()
    mlflow: MlflowSpec = MlflowSpec()
    custom: list[str] = Field(default_factory=list, description="more sinks, as `module:Class`, a class marked @orchestrator.hooks.tracking_sink (see orchestrator.shared.tracking.sinks.Sink)")
    interval_s: float = Field(2.0, gt=0, le=300, description="how often rank 0 mirrors new rows and events")
    group: Optional[str] = Field(None, max_length=128, description="runs that belong together (a sweep's trials, set by `orch sweep`): "
                                 "wandb's group, and an MLflow parent run of this name")

    @property
    def any(self) -> bool:
        return self.wandb.enabled or self.tensorboard.enabled or self.mlflow.enabled or bool(self.custom)
