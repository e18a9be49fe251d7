"""The rows of `metrics.jsonl` (one logged step, rank 0's) and of `energy/series.jsonl` (each node's
energy so far), typed. Metric rows stay plain dicts (a `TypedDict`), since scripts read and rewrite
that log; a row whose known fields are missing or of the wrong type is no row (`parse_*` returns
None) and its log's reader skips it like a torn line."""

from __future__ import annotations

from typing import Optional

from typing_extensions import Required, TypedDict

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator


class MetricRow(TypedDict, total=False):
    """One logged step (rank 0): a plain dict, as scripts read and rewrite the log, with its known
    figures typed. A figure is absent or a number, never null (readers format it); `grad_norm` and
    `mfu` are null where the backend or device gives none. A mixture adds each source's samples this
    step as `samples/<source>`."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    step: Required[int]
    loss: float
    val_loss: float
    """Only on the steps that evaluated."""
    lr: float
    grad_norm: Optional[float]
    tokens: int
    tokens_per_s: float
    mfu: Optional[float]
    step_s: float
    """The step's batch fetch and compute (not its evaluation)."""
    compute_s: float
    """The compute of the steps since the previous logged row, this one included (`train.log_interval`
    steps, fewer after a resume): with `data_s`, what the goodput ledger counts."""
    data_s: float
    """The batch fetch of the same steps."""
    eval_s: float
    """Only on the steps that evaluated: how long the evaluation took."""
    peak_memory_bytes: Optional[int]
    energy_kwh: float
    """The whole run's IT kWh as of rank 0's last aggregation, when energy is measured."""
    param_digest: str


class SeriesPoint(BaseModel):
    """Each node's energy so far, and its power since the previous point (`energy/series.jsonl`):
    per node, `kwh` and the mean `power_w`, `cpu_w`, `memory_w`, `gpu:<uuid>_w` where measured."""

    model_config = ConfigDict(frozen=True)

    time: float
    step: int
    kwh: float
    nodes: dict[str, dict[str, float]]

    @model_validator(mode="after")
    def _each_node_has_its_energy(self) -> "SeriesPoint":
        if any("kwh" not in figures for figures in self.nodes.values()):
            raise ValueError("a node without its kwh")
        return self

    @property
    def kwh_by_node(self) -> dict[str, float]:
        """Each node's energy so far (IT kWh), the one figure every node has."""
        return {node: figures["kwh"] for node, figures in self.nodes.items()}


_METRIC_ROW = TypeAdapter(MetricRow)


def parse_metric_row(row: dict) -> MetricRow | None:
    try:
        return _METRIC_ROW.validate_python(row, strict=True)
    except ValidationError:
        return None


def parse_series_point(row: dict) -> SeriesPoint | None:
    try:
        return SeriesPoint.model_validate(row, strict=True)
    except ValidationError:
        return None
