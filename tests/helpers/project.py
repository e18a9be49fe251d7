"""Where the project's files are, and the overrides that keep test runs small."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
TINY = RECIPES / "tiny-pretrain.yaml"
# Small corpus and short runs keep the distributed tier to a few minutes on 2 cores.
FAST = ["data.max_bytes=1500000", "train.schedule.warmup_steps=2", "train.eval_interval=1000"]
# For runs gated to test the plumbing around the gates (dashboards, backends), not the gates' power:
# every gate runs, on fewer probes.
LIGHT_GATES = ["gates.memorisation.prefixes=4", "gates.content.unconditioned=4", "gates.content.samples_per_prompt=1",
               "gates.robustness.texts=8", "gates.evaluation.limit=30", "gates.quality.eval_sequences=16"]
# Twelve steps with a checkpoint every four: the run the recovery tests (kills, restarts, rollbacks) fault and
# then compare, loss for loss, with the same run trained without a fault (conftest's `uninterrupted`).
SHORT_RUN = [*FAST, "train.steps=12", "checkpoint.interval_steps=4"]
