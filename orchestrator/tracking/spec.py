"""The `tracking` section. Runs always write `metrics.jsonl`; dashboard sinks (wandb, TensorBoard,
MLflow) are added here by the tracking work and are refused as unknown keys until then."""

from orchestrator.spec import Spec


class TrackingSpec(Spec):
    pass
