"""The dashboards: rank 0's mirror and the sinks it sends to."""
