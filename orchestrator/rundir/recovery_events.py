"""The events of recovery (issue 31), written by the node launchers, their watchdogs and the Slurm
batch step: attempts started and failed (with their failure class), hangs, stragglers, rolled-back
losses and unhealthy nodes. Part of the union of every kind in `orchestrator.rundir.rows`."""

from __future__ import annotations

from typing import Literal, Optional, Union

from orchestrator.rundir.base_event import BaseEvent


class AttemptStarted(BaseEvent):
    """A node launcher (node 0's) began an attempt, before starting its ranks: the goodput ledger's
    start-up runs from here to the attempt's `start`."""
    event: Literal["attempt_started"] = "attempt_started"
    attempt: Optional[int] = None


FailureClass = Literal["crash", "hang", "oom", "nan", "preempted", "cancelled", "node_unhealthy"]
"""Why an attempt ended short of completion, as `orch status`, the report and the trackers name it."""


class Hang(BaseEvent):
    """A node launcher's watchdog found ranks past their phase's timeout: it wrote every local rank's
    stacks under `stacks` (relative to the run directory) and ended the attempt's ranks."""
    event: Literal["hang"] = "hang"
    node: Optional[int] = None
    attempt: Optional[int] = None
    phase: Optional[str] = None
    step: Optional[int] = None
    timeout_s: Optional[float] = None
    stopped_ranks: Optional[list[int]] = None
    """The ranks that stopped reporting first: the ones furthest behind (lowest step, then earliest phase
    of it; where several tie, those the kernel shows stopped)."""
    stacks: Optional[str] = None

    def describe(self) -> str:
        ranks = ", ".join(map(str, self.stopped_ranks or [])) or "?"
        timeout = f" (timeout {self.timeout_s:.0f} s)" if self.timeout_s is not None else ""
        return f"hang: rank(s) {ranks} stopped reporting in {phase_of_step(self.phase, self.step)}{timeout}; stacks in {self.stacks}"


def phase_of_step(phase: str | None, step: int | None) -> str:
    """Where a rank was, in words: "set-up", "step 12", "checkpoint of step 12"."""
    if phase == "setup" or step is None:
        return "set-up" if phase in ("setup", None) else phase
    return f"step {step}" if phase == "step" else f"{phase} of step {step}"


class AttemptFailed(BaseEvent):
    """An attempt ended on a fault, classified; `restarting` says whether the run goes on by itself."""
    event: Literal["attempt_failed"] = "attempt_failed"
    attempt: Optional[int] = None
    failure: Optional[FailureClass] = None
    detail: Optional[str] = None
    ranks: Optional[list[int]] = None
    nodes: Optional[list[str]] = None
    """The nodes of those ranks, where the Slurm batch step knows them (a node named twice is left out)."""
    restarting: Optional[bool] = None
    restarts: Optional[int] = None
    """In-job restarts so far within the window, this one included when `restarting`."""
    max_restarts: Optional[int] = None
    evidence: Optional[str] = None
    """Where to look, relative to the run directory: the failed rank's log, or a hang's stacks."""
    no_restart: Optional[str] = None
    """Why the run does not restart by itself (None when `restarting`)."""

    def describe(self) -> str:
        what = f"attempt {self.attempt} failed: {self.failure} ({self.detail}{f'; see {self.evidence}' if self.evidence else ''})"
        if self.restarting:
            return f"{what}; restart {self.restarts} of {self.max_restarts} from the newest verified checkpoint"
        return f"{what}; {self.no_restart or f'no restart left ({self.restarts} of {self.max_restarts} used)'}"


class RanksFailed(BaseEvent):
    """A node launcher of a job of several nodes saw its own ranks fail by themselves (not the peers it
    killed after them); it restarts nothing, the Slurm batch step decides for the whole job. Every
    node's ranks fail once one rank is gone (their collectives see the closed connection), so the
    batch step names the node whose failed rank failed first, `quiet_since`."""
    event: Literal["ranks_failed"] = "ranks_failed"
    node: Optional[int] = None
    attempt: Optional[int] = None
    failure: Optional[FailureClass] = None
    detail: Optional[str] = None
    ranks: Optional[list[int]] = None
    evidence: Optional[str] = None
    quiet_since: Optional[float] = None
    """When the rank that failed first failed (seconds since the epoch): its fatal exception's record
    (`launch.rank_errors`), else when its log was last written."""


class LossRolledBack(BaseEvent):
    """A non-finite loss (or one past `fault_tolerance.max_loss_spike` x its recent median): the ranks
    went back to the checkpoint at `checkpoint_step` instead of training on it."""
    event: Literal["loss_rolled_back"] = "loss_rolled_back"
    step: Optional[int] = None
    loss: Optional[float] = None
    problem: Optional[str] = None
    """"non-finite", or the spike against the median."""
    checkpoint_step: Optional[int] = None
    """0: no checkpoint yet, the ranks started over from their initial state."""
    data_position: Optional[str] = None
    recomputed_steps: Optional[int] = None
    """Steps logged after the checkpoint, trained again."""

    def describe(self) -> str:
        return f"loss {self.loss} at step {self.step} ({self.data_position}): rolled back to step {self.checkpoint_step}"


class LossNotRecovered(BaseEvent):
    """The loss went bad again at a data position it had already rolled back from (the data, not a
    transient fault), or with nothing to roll back to: the ranks stopped (exit `EXIT_NAN`)."""
    event: Literal["loss_not_recovered"] = "loss_not_recovered"
    step: Optional[int] = None
    loss: Optional[float] = None
    problem: Optional[str] = None
    data_position: Optional[str] = None
    rolled_back_to: Optional[int] = None
    """The step the first rollback from this position went back to; None: there was no checkpoint."""

    def describe(self) -> str:
        again = f"again after rolling back to step {self.rolled_back_to}" if self.rolled_back_to is not None else "with nothing to roll back to"
        return f"loss {self.loss} at step {self.step} ({self.data_position}) {again}: training stopped"


class Straggler(BaseEvent):
    """The ranks whose own time per step (data wait + compute) exceeded `ratio` x the others' median
    over the last window (`launch.stragglers`); written when that set changes, an empty one when
    they caught up. `per_rank`: each rank's median data wait, compute and time blocked in
    collectives, in seconds."""
    event: Literal["straggler"] = "straggler"
    step: Optional[int] = None
    ranks: Optional[list[int]] = None
    ratio: Optional[float] = None
    window_steps: Optional[int] = None
    per_rank: Optional[list[list[float]]] = None

    def describe(self) -> str:
        if not self.ranks:
            return f"stragglers: none any more at step {self.step}"
        splits = self.per_rank or []
        own = [sum(split[:2]) for split in splits]
        named = []
        for rank in self.ranks:
            others = sorted(own[:rank] + own[rank + 1:])
            middle = others[len(others) // 2] if others else 0.0
            data, compute, _ = splits[rank]
            named.append(f"rank {rank} ({own[rank] / middle if middle else float('inf'):.1f}x the others' own time per step: "
                         f"data {data:.3f} s, compute {compute:.3f} s)")
        return f"straggler at step {self.step}: " + "; ".join(named)


class NodeUnhealthy(BaseEvent):
    """Nodes failed the batch step's health check before the ranks started (`orchestrator.slurm.preflight`);
    `excluded`: the job was requeued without them."""
    event: Literal["node_unhealthy"] = "node_unhealthy"
    job_id: Optional[Union[int, str]] = None
    problems: Optional[dict[str, list[str]]] = None
    """By node name."""
    excluded: Optional[bool] = None
    replaced: Optional[bool] = None
    """The job went on without them, on spare nodes of its allocation (`fault_tolerance.spare_nodes`)."""

    def describe(self) -> str:
        found = "; ".join(f"{node}: {', '.join(p)}" for node, p in (self.problems or {}).items())
        then = "on spare nodes" if self.replaced else "requeued without them" if self.excluded else "no job retry left"
        return f"unhealthy node(s) {found}; {then}"
