"""Hugging Face libraries work offline here: no model or dataset hub is reached at run time (the
data is local files, the models are built from sizes or loaded from a local directory), and a
lookup that would hang on a cluster without internet fails at once instead."""

from __future__ import annotations

import os

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def work_offline() -> None:
    """For this process and what it starts; a value the user set stays."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
