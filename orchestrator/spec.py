"""The base every recipe section derives from, and the error its cross-field rules raise."""

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Closed (unknown keys are errors, reported with the nearest valid key) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleViolation(ValueError):
    """A cross-field rule broken inside a section; `key` (relative to that section) is what to fix,
    so the error can point at the line of the offending value rather than at the section."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
