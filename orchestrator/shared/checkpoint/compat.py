"""Whether a checkpoint can continue under the recipe at hand.

Resuming is unsafe when the model's shape, the data, the world layout or the batch (which fixes
the data position) changed; it is safe, and recorded, for the rest (more steps, another LR tail,
other evaluation or checkpoint settings).
"""

from __future__ import annotations

UNSAFE = ("model", "data", "task", "distributed", "train.micro_batch_size", "train.global_batch_size",
          "train.gradient_accumulation_steps", "train.seed", "train.precision")
# How many processes, and how they are spread over nodes: an elastic resume may change these (the
# resulting world size is checked on its own), as long as the global batch stays the same.
WORLD_LAYOUT = ("distributed.nodes", "distributed.procs_per_node", "train.gradient_accumulation_steps")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def recipe_changes(saved: dict, current: dict, ignore_world_layout: bool = False) -> tuple[list[str], list[str]]:
    """(unsafe, safe) changes, each as `key: old -> new`; with `ignore_world_layout` the process
    layout may change (elastic resume) and is listed as safe."""
    before, after = _flatten(saved), _flatten(current)
    unsafe, safe = [], []
    for key in sorted(set(before) | set(after)):
        if key == "name" or before.get(key) == after.get(key):
            continue
        change = f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        layout = ignore_world_layout and key in WORLD_LAYOUT
        (unsafe if not layout and any(key == u or key.startswith(u + ".") for u in UNSAFE) else safe).append(change)
    return unsafe, safe


def world_change(saved_world: int, current_world: int) -> str | None:
    if saved_world == current_world:
        return None
    return f"world size {saved_world} -> {current_world}: ZeRO shards are laid out per rank"
