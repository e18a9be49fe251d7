"""The project's own error classes and exit codes: the CLI turns each error into one readable line
and its exit code; the ranks, the node launcher and the Slurm batch step exit with the same codes.

Anything else that escapes is a bug in the orchestrator and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_FAILURE = 1
EXIT_BUDGET = 3
"""Stopped cleanly, with a checkpoint, because the energy or carbon budget was spent."""
EXIT_GATES_FAILED = 4
"""A required gate failed, or a release was refused: pipelines stop on it."""
EXIT_RUN_BUSY = 5
"""Refused: another attempt is live in the run directory (its holder is named)."""
EXIT_VERIFY_FAILED = 6
"""`orch verify`: the directory is not an intact release (a changed, missing, added or linked file)."""
EXIT_REQUEUE = 75
"""EX_TEMPFAIL, "try again later": checkpointed and stopped on a signal; the Slurm job requeues on it."""

# The faults a rank or a node launcher ends with, each its own code so that the launcher can tell the
# attempt's failure class (`rows.FailureClass`) without reading logs; apart from the sysexits codes
# above and from 128 + a signal's number.
EXIT_HANG = 81
"""The node launcher's watchdog found ranks past their phase's timeout and ended the attempt."""
EXIT_OOM = 82
"""A rank ran out of memory (MemoryError, torch.OutOfMemoryError): class `oom`, not `crash`."""
EXIT_NAN = 83
"""A rank stopped on a non-finite (or spiking) loss that rolling back did not cure: class `nan`."""


@dataclass(frozen=True)
class Location:
    """Where a recipe value came from: a file and line, or the command line."""

    source: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, tied to the dotted key it concerns."""

    path: str
    message: str
    location: Location | None = None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        key = f"{self.path}: " if self.path else ""
        return f"{where}{key}{self.message}"


class OrchestratorError(Exception):
    """A user-facing failure; `exit_code` is what the CLI returns."""

    exit_code = EXIT_FAILURE

    def lines(self) -> list[str]:
        return [str(self)]


class RecipeError(OrchestratorError):
    """The recipe (or its overrides) is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class LaunchError(OrchestratorError):
    """Training processes could not be started or ended in failure."""


class DataError(OrchestratorError):
    """The recipe's data cannot be read or tokenized as asked."""


class Preempted(OrchestratorError):
    """Training stopped on a signal after a checkpoint; running again resumes it."""

    exit_code = EXIT_REQUEUE


class RunBusy(OrchestratorError):
    """Another attempt (an `orch run`, or the node launcher it left) still trains in the run directory."""

    exit_code = EXIT_RUN_BUSY


class BudgetExceeded(OrchestratorError):
    """Training stopped cleanly, with a checkpoint, because the run spent its energy or carbon budget."""

    exit_code = EXIT_BUDGET


class ResumeError(OrchestratorError):
    """The run directory's checkpoints cannot continue under this recipe."""


class SlurmError(OrchestratorError):
    """Slurm is missing, unreachable, or refused the request."""


class SweepError(OrchestratorError):
    """A sweep cannot start or continue as asked (another sweep in its directory, an array still running)."""


class DamagedRun(OrchestratorError):
    """A file of a run directory cannot be read: a crash, a full disk or a hand edit left it damaged."""


class CheckpointError(OrchestratorError):
    """A run's checkpoints cannot be listed or exported as asked (none there, none verified, no such step)."""


class EnergyError(OrchestratorError):
    """A run's energy bill cannot be shown (not a run directory, no records)."""


class GateError(OrchestratorError):
    """The gates cannot be evaluated as the recipe asks (a missing file, an unreadable probe)."""


class GatesFailed(OrchestratorError):
    """A required gate failed on the checkpoint: pipelines stop on this exit code."""

    exit_code = EXIT_GATES_FAILED


class ReleaseRefused(OrchestratorError):
    """The checkpoint may not be released (not gated, gated on other content, failed, or the place is taken)."""

    exit_code = EXIT_GATES_FAILED


class ReleaseInvalid(OrchestratorError):
    """A release directory does not match its manifest or lacks what a release must hold; one line per problem."""

    exit_code = EXIT_VERIFY_FAILED

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)
