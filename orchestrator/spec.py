"""The base every recipe section derives from, the types sections share, and the error their
cross-field rules raise."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Spec(BaseModel):
    """Closed (unknown keys are errors, reported with the nearest valid key) and immutable. Numbers are
    finite: YAML reads `.inf`, `.nan` and `1e400` as numbers, and not one recipe value means them (an
    infinite learning rate fails inside a rank; a NaN power-usage factor makes a bill no budget stops)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""A random seed: what numpy's and torch's generators both accept."""


class RuleViolation(ValueError):
    """A cross-field rule broken inside a section; `key` (relative to that section) is what to fix,
    so the error can point at the line of the offending value rather than at the section."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
