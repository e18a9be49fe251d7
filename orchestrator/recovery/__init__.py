"""Recovery without a person: the `fault_tolerance` recipe section and what the control plane
reads back of a run's faults (hangs, restarts, failure classes)."""
