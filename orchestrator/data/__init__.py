"""Training data: its sources, their curation, and their tokenizing into shards (`orch prepare`)."""

MAX_WORKERS = 1024
"""Preparation's processes at most, in the recipe (`data.workers`) and on the command line (`orch
prepare --workers`); kept here so that the command line reads it without building the recipe's schema."""
