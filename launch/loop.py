"""The training loop every backend shares: data, steps, evaluation, metrics, checkpoints, resume."""

from __future__ import annotations

import gc
import hashlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from launch import progress, rank_state
from launch.energy.account import EnergyAccount, NullAccount
from launch.energy.monitor import Monitor
from launch.engines import Engine
from launch.faults import Faults
from launch.loss_guard import BadLoss, LossGuard, data_position
from launch.peak_flops import peak_flops_per_device
from launch.signals import StopFlag
from launch.stragglers import StragglerWatch
from orchestrator.shared.checkpoint import store
from orchestrator.shared.checkpoint.policy import SavePolicy, job_deadline, last_stall
from orchestrator.shared.checkpoint.resume import compatibility
from orchestrator.shared.checkpoint.saver import CheckpointSaver, SaveReport
from orchestrator.shared.checkpoint.upload import uploader_for
from orchestrator.shared.data.prepared import PreparedData
from orchestrator.shared.data.stream import open_split, open_stream, validation_indices
from orchestrator.shared import goodput
from orchestrator.errors import EXIT_BUDGET, EXIT_NAN, EXIT_REQUEUE
from orchestrator.shared.model.inputs import count, take
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir import events
from orchestrator.rundir.bill import EnergyBill
from orchestrator.rundir.checkpoint_records import RunSummary, write_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import ElasticRecord, PlanRecord, read_elastic, read_provenance
from orchestrator.rundir.base_event import BaseEvent
from orchestrator.rundir.memory_phases import MemoryPhases
from orchestrator.rundir.recovery_events import LossNotRecovered, LossRolledBack
from orchestrator.rundir.rows import (Checkpoint, CheckpointSetAside, Completed, ElasticResume, Preempted, RecipeChangedOnResume,
                                      ReplicasDiverged, Resumed, Start, StartedOver, StoppedOverBudget)

MEMORY_STAGE_ROOT = Path("/dev/shm")


@dataclass(frozen=True)
class ResumeDecision:
    """What rank 0 decided about resuming, broadcast to every rank: the checkpoint (None: a fresh
    start), why it cannot be continued, and the elastic record for a resume at another world size."""

    tag: str | None = None
    problem: str | None = None
    elastic: ElasticRecord | None = None


class Trainer:
    def __init__(self, recipe: Recipe, plan: PlanRecord, run: RunDir, data: PreparedData, engine: Engine, world: int, stop: StopFlag,
                 monitor: Monitor, account: EnergyAccount | NullAccount, rebuild: Callable[[], Engine] | None = None):
        """`rebuild` makes the engine afresh, as it was first built: a rollback before the first checkpoint
        goes back to the start with it."""
        self.recipe, self.plan, self.run, self.engine, self.world, self.stop = recipe, plan, run, engine, world, stop
        self.monitor, self.account, self.rebuild = monitor, account, rebuild
        train, batch = recipe.train, plan.batch
        seq_len = recipe.data.seq_len
        self.train_data = open_split(data, "train", seq_len)
        self.val_data = open_split(data, "val", seq_len)
        self.source_names = [source.name for source in data.sources]
        self.stream = open_stream(self.train_data, data, batch.micro_batch_size, batch.gradient_accumulation_steps, world, engine.rank, train.seed)
        self.val_rows = self.val_data.rows(
            validation_indices(len(self.val_data), train.eval_batches * batch.micro_batch_size, world, engine.rank)
        )
        self.tokens_per_step = batch.tokens_per_step
        self.flops_per_step = plan.estimate.flops_per_token * self.tokens_per_step
        # MFU's denominator per rank (`launch.peak_flops`); the `start` event records it, so every row's
        # MFU can be recomputed from the run directory.
        self.peak_flops_per_device = peak_flops_per_device(plan.estimate.peak_flops_per_device, plan.topology.device,
                                                           engine.mean_across_ranks)
        self.peak_flops = self.peak_flops_per_device * world
        self.is_logger = engine.rank == 0
        spec = recipe.checkpoint
        self.root = plan.checkpoint_dir
        memory_stage = MEMORY_STAGE_ROOT / f"orchestrator-{hashlib.sha256(str(run.path).encode()).hexdigest()[:16]}"
        self.saver = CheckpointSaver(
            self.root, engine.rank, world, spec.keep_last, spec.keep_every, spec.commit_timeout_s,
            memory_stage if spec.async_save and MEMORY_STAGE_ROOT.is_dir() else None, self._committed, engine.shard_owner,
            uploader_for(spec.remote, engine.rank, self.event),
        )
        history = run.history()
        self.policy = SavePolicy(spec, train.steps, job_deadline(history), last_stall(history))
        self.faults = _injected_faults(engine.rank, run)
        self.guard = LossGuard(recipe.fault_tolerance.max_loss_spike)
        recovery = recipe.fault_tolerance
        self.stragglers = StragglerWatch(recovery.straggler_ratio, recovery.straggler_window_steps) if recovery.enabled else None
        self.rolled_back: dict[str, int] = {}
        """The data positions whose loss went bad in this attempt, with the step each rolled back to."""
        self.initial: rank_state.RankState | None = None
        """Where a fresh start's first step found the data and RNGs: a rollback with no checkpoint returns there."""
        self.unlogged = {"compute_s": 0.0, "data_s": 0.0}
        """The steps' compute and batch fetch since the last logged row: the next row carries them, so the
        goodput ledger counts every step whatever `train.log_interval`."""

    # -- lifecycle -----------------------------------------------------------------------------

    def train(self) -> int:
        start = self.resume()
        steps = self.recipe.train.steps
        self.event(Start(step=start, world_size=self.world, peak_flops_per_device=self.peak_flops_per_device))
        self.account.settle(start)  # earlier attempts count against the budget too
        if self.engine.any_across_ranks([self.account.over_budget])[0]:
            return self.stop_over_budget(start, saved=start > 0)
        saved = start == steps
        if start == 0:
            self.initial = rank_state.capture(0, self.stream.state_dict())
        step = start
        while step < steps:
            step += 1
            try:
                row = self.step(step)
            except BadLoss as bad:
                back = self.roll_back(bad)
                if back is None:
                    return self.stop_on_bad_loss(bad)
                step = back
                continue
            no_time = self.is_logger and self.stop.requested and not self.policy.save_fits()
            stop, due, no_time, over_budget = self.engine.any_across_ranks(
                [self.stop.requested, self.is_logger and self.policy.time_due(), no_time, self.account.over_budget]
            )
            saved = False
            if (stop and not no_time) or due or over_budget or self.policy.step_due(step):
                if "compute_s" not in row:  # not logged: the checkpoint's copy of the metrics must hold its steps' time
                    self.log_step(row)
                self.save(step)
                saved = True
            if stop:
                self.saver.close()
                self.event(Preempted(step=step, signal=self.stop.signum, saved=not no_time))
                return EXIT_REQUEUE
            if over_budget:
                return self.stop_over_budget(step, saved=True)
        if not saved:
            self.save(steps)
        self.saver.close()
        self.finish()
        return 0

    def stop_over_budget(self, step: int, saved: bool) -> int:
        """A clean stop: the checkpoint is committed, the bill settled, and the run says why it ended."""
        self.saver.close()
        bill = self.account.settle(step)
        if bill:
            self.event(StoppedOverBudget(step=step, kwh=bill.totals.facility_kwh, kgco2e=bill.totals.kgco2e, saved=saved))
        return EXIT_BUDGET

    def step(self, step: int) -> dict:
        progress.report("step", step)
        self.monitor.phase("train", step)
        lr = self.engine.lr
        self.engine.memory.begin()
        tic = time.perf_counter()
        loss_factor = self.faults.fire(step)  # a `slow` rank's wait counts as its data wait
        batch = [self.train_data.rows(i) for i in self.stream.step_indices()]
        fetched = time.perf_counter()
        local_loss = self.engine.train_step(batch, loss_factor=loss_factor)
        peak_memory = self.engine.memory.stretch_bytes
        (loss,) = self.engine.mean_across_ranks([local_loss])
        problem = self.guard.check(step, loss)  # the mean: every rank decides alike
        if problem:
            raise BadLoss(step, loss, problem, data_position(self.stream.state_dict(), self.stream.global_batch_size))
        step_s = time.perf_counter() - tic
        self.unlogged["data_s"] += fetched - tic
        self.unlogged["compute_s"] += step_s - (fetched - tic)
        self.watch_stragglers(step, fetched - tic, step_s)
        row = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": self.engine.grad_norm,
            "tokens": step * self.tokens_per_step,
            "tokens_per_s": self.tokens_per_step / step_s,
            "mfu": self.flops_per_step / step_s / self.peak_flops if self.peak_flops else None,
            "step_s": step_s,
            "peak_memory_bytes": peak_memory,
        }
        by_source = self.stream.last_step_sources()
        if by_source is not None:  # a mixture: what each source gave this step
            row.update({f"samples/{name}": n for name, n in zip(self.source_names, by_source)})
        if self.account.latest_kwh is not None:
            row["energy_kwh"] = self.account.latest_kwh  # the whole run's, as of the rank 0 monitor's last aggregation
        train = self.recipe.train
        if train.replica_check_interval and step % train.replica_check_interval == 0:
            row["param_digest"] = self.check_replicas(step)
        if step % train.eval_interval == 0 or step == train.steps:
            tic = time.perf_counter()
            row["val_loss"] = self.evaluate(step)
            row["eval_s"] = time.perf_counter() - tic
        if step % train.log_interval == 0 or step == train.steps or "val_loss" in row:
            self.log_step(row)
        return row

    def watch_stragglers(self, step: int, data_s: float, step_s: float) -> None:
        medians = self.stragglers and self.stragglers.add(data_s, self.engine.forward_s, step_s)
        if medians:
            found = self.stragglers.verdict(step, self.engine.gather(medians))
            if found and self.is_logger:
                self.event(found)

    def log_step(self, row: dict) -> None:
        """Log a step's row with the compute and batch fetch of the steps since the previous logged one."""
        row.update(self.unlogged)
        self.unlogged = dict.fromkeys(self.unlogged, 0.0)
        self.log(row)

    def check_replicas(self, step: int) -> str:
        digests = self.engine.gather(self.fingerprint())
        if len(set(digests)) > 1:
            self.event(ReplicasDiverged(step=step, digests=digests))
            raise SystemExit(f"step {step}: the ranks' parameters differ (digests {digests}); the last checkpoint is intact")
        return digests[0]

    def fingerprint(self) -> str:
        self.engine.memory.begin()
        fingerprint = self.engine.fingerprint()
        self.engine.memory.end("fingerprint")
        return fingerprint

    def evaluate(self, step: int) -> float:
        progress.report("evaluation", step)
        self.monitor.phase("eval")
        micro = self.plan.batch.micro_batch_size
        self.engine.memory.begin()
        losses = [self.engine.eval_loss(take(self.val_rows, i, i + micro)) for i in range(0, count(self.val_rows), micro)]
        self.engine.memory.end("evaluation")
        (mean,) = self.engine.mean_across_ranks([float(np.mean(losses))])
        self.monitor.phase("train", step)
        return mean

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, step: int) -> None:
        progress.report("checkpoint", step)
        self.monitor.phase("checkpoint", step)
        self.faults.fire(step, "save")
        state = rank_state.capture(step, self.stream.state_dict())
        meta = {"recipe": self.recipe.model_dump(mode="json"), "recipe_hash": self.plan.recipe_hash, "world_size": self.world,
                "zero_stage": self.recipe.distributed.zero_stage, "tokens": step * self.tokens_per_step,
                "libraries": provenance.libraries if (provenance := read_provenance(self.run)) else {}}

        def write_shards(base: Path, tag: str) -> None:
            (base / tag).mkdir(parents=True, exist_ok=True)  # on every rank: some engines write from rank 0 alone
            self.engine.save_shards(base, tag)
            rank_state.write(base / tag, self.engine.rank, state)
            if self.is_logger and self.run.metrics.exists():
                (base / tag / self.run.metrics.name).write_bytes(self.run.metrics.read_bytes())
            self.monitor.flush()  # every rank's record is current before rank 0 settles the bill
            self.engine.memory.end("checkpoint_save")
            # The barrier every save needs, as a gather of every rank's peaks so far: no collective more.
            # Recorded before the commit's `checkpoint` event, which ends a stopping run's history.
            self.record_memory(step, self.engine.gather(self.engine.memory.record()))

        self.engine.memory.begin()
        self.policy.saved(self.saver.save(step, write_shards, meta))
        self.account.settle(step)

    def _committed(self, report: SaveReport) -> None:
        self.policy.committed(report.stall_s + report.write_s)
        self.event(Checkpoint(step=report.step, stall_s=report.stall_s, bytes=report.bytes, write_s=report.write_s,
                              write_gb_per_s=report.bytes / report.write_s / 1e9 if report.write_s else None, path=report.path))

    def resume(self) -> int:
        """Continue from the newest verified checkpoint, if any; returns the step it holds (0 for a fresh start)."""
        found = self._newest_checkpoint()
        if found.problem:
            raise SystemExit(f"cannot resume from {found.tag}: {found.problem}")
        if not found.tag:
            recomputed = self._metrics_from(None)
            if recomputed:  # an earlier attempt was killed before its first save committed
                self.event(StartedOver(recomputed_steps=recomputed))
            return 0
        state, recomputed = self._load(found)
        self.event(Resumed(checkpoint=found.tag, step=state.step, recomputed_steps=recomputed))
        if found.elastic:
            self.event(ElasticResume(checkpoint=found.tag, from_world_size=found.elastic.from_world_size,
                                     to_world_size=self.world, consumed_samples=state.data.consumed_samples))
        return state.step

    def _newest_checkpoint(self) -> ResumeDecision:
        """Rank 0's decision about the newest verified checkpoint, broadcast to every rank."""
        found = None
        if self.is_logger:
            set_aside: list[CheckpointSetAside] = []
            checkpoint = store.find_resumable(self.root, set_aside)
            for event in set_aside:
                self.event(event)
            found = self._decide(checkpoint) if checkpoint else ResumeDecision()
        return self.engine.broadcast(found)

    def _load(self, found: ResumeDecision) -> tuple[rank_state.RankState, int]:
        """The checkpoint's shards, RNG states, data position and metrics; returns its rank state and
        the metric rows it dropped (rank 0's count)."""
        checkpoint = self.root / found.tag
        self.engine.memory.begin()
        if found.elastic:
            # Another world size: shards from the universal conversion, the global data position from
            # rank 0's state, and RNG states reseeded (per-rank streams cannot be carried over).
            state = rank_state.read(checkpoint, 0)
            self.engine.load_shards(found.elastic.universal_root, found.tag)
            seed_everything(self.recipe.train.seed + state.step + self.engine.rank)
        else:
            state = rank_state.read(checkpoint, self.engine.rank)
            self.engine.load_shards(self.root, found.tag)
            rank_state.restore_rng(state)
        self.engine.memory.end("resume")
        self.stream.load_state_dict(state.data)
        recomputed = self._metrics_from(checkpoint)
        self.engine.barrier()
        return state, recomputed

    # -- rollback -------------------------------------------------------------------------------

    def roll_back(self, bad: BadLoss) -> int | None:
        """Back to the newest verified checkpoint (the start when there is none yet), instead of training
        on a bad loss; the data replays from there, so a transient fault passes and the run stays
        bit-exact. Returns the step gone back to; None when this data position went bad before
        (the data itself, not a fault) or there is nothing to go back to."""
        progress.report("setup", bad.step)  # loading a checkpoint or building the engine: timed as at the start
        self.saver.wait()  # a save still committing may be the newest checkpoint
        found = self._newest_checkpoint()
        if bad.data_position in self.rolled_back or found.problem or not (found.tag or self.initial and self.rebuild):
            return None
        if found.tag:
            state, recomputed = self._load(found)
            step = state.step
        else:
            step, recomputed = 0, self._start_over()
        self.rolled_back[bad.data_position] = step
        self.unlogged = dict.fromkeys(self.unlogged, 0.0)  # those steps are recomputed: the ledger counts them as such
        self.guard.rewind(step)
        self.event(LossRolledBack(step=bad.step, loss=bad.loss, problem=bad.problem, checkpoint_step=step,
                                  data_position=bad.data_position, recomputed_steps=recomputed))
        return step

    def _start_over(self) -> int:
        """Step 0 again: the engine built afresh as at the start (from the seed), the data and RNG states
        where the first step found them. Returns the metric rows dropped."""
        peaks = self.engine.memory
        self.engine = None  # the old engine's memory goes before the new one takes its own
        gc.collect()
        seed_everything(self.recipe.train.seed)
        self.engine = self.rebuild()
        self.engine.memory.keep(peaks)
        rank_state.restore_rng(self.initial)
        self.stream.load_state_dict(self.initial.data)
        return self._metrics_from(None)

    def stop_on_bad_loss(self, bad: BadLoss) -> int:
        """A bad loss where rolling back cannot help: the run stops, naming the data position; the
        checkpoints stay as they are."""
        self.saver.close()
        back = self.rolled_back.get(bad.data_position)
        self.event(LossNotRecovered(step=bad.step, loss=bad.loss, problem=bad.problem, data_position=bad.data_position,
                                    rolled_back_to=back))
        why = f"again after rolling back to step {back}" if back is not None else "and no checkpoint to roll back to"
        print(f"error: {bad}, {why}: training stopped; the checkpoints are intact", file=sys.stderr, flush=True)
        return EXIT_NAN

    def _decide(self, checkpoint: Path) -> "ResumeDecision":
        """Whether this rank's world may continue the checkpoint, and the elastic record when `orch run`
        prepared it for this world size."""
        manifest = store.read_manifest(checkpoint)
        elastic = read_elastic(self.run) if manifest.world_size != self.world else None
        ready = elastic is not None and elastic.tag == checkpoint.name
        unsafe, safe = compatibility(manifest, self.recipe.model_dump(mode="json"), self.world, elastic_ready=ready)
        if unsafe:
            return ResumeDecision(tag=checkpoint.name, problem="; ".join(unsafe))
        if safe:
            self.event(RecipeChangedOnResume(checkpoint=checkpoint.name, changes=safe))
        return ResumeDecision(tag=checkpoint.name, elastic=elastic if ready else None)

    def _metrics_from(self, checkpoint: Path | None) -> int:
        """Metrics become the checkpoint's copy (none before the first checkpoint): rows logged after it
        are recomputed, not duplicated. Returns how many rows went (on rank 0, which writes them)."""
        if not self.is_logger:
            return 0
        before = len(self.run.metric_rows())
        saved = checkpoint / self.run.metrics.name if checkpoint else None
        if checkpoint or before:
            self.run.write_file(self.run.metrics.name, saved.read_text() if saved and saved.exists() else "")
        return max(0, before - len(self.run.metric_rows()))

    # -- reporting ------------------------------------------------------------------------

    def event(self, event: BaseEvent) -> None:
        if self.is_logger:
            events.append(self.run.events, event)

    def log(self, row: dict) -> None:
        if self.is_logger:
            events.append_row(self.run.metrics, row)

    def record_memory(self, step: int, ranks: list) -> None:
        """Every rank's peak per phase so far (gathered by the caller), at each checkpoint and at the end."""
        self.event(MemoryPhases.of(step, ranks))

    def finish(self) -> None:
        self.monitor.phase("idle")
        self.monitor.flush()
        fingerprint = self.fingerprint()
        fingerprints, memory = zip(*self.engine.gather((fingerprint, self.engine.memory.record())))  # one gather for both
        bill = self.account.settle()
        if not self.is_logger:
            return
        rows = self.run.metric_rows()
        self.record_memory(rows[-1]["step"], list(memory))
        history = self.run.history()
        starts = [e.time for e in history if isinstance(e, Start)]
        now = time.time()
        spent = goodput.ledger(history, rows, now)
        if bill:
            spent = goodput.energy_by_cause(spent, bill.phases_kwh, bill.failures_kwh.recomputed)
        last = rows[-1]
        steady = [r["tokens_per_s"] for r in rows[1:]] or [last["tokens_per_s"]]
        checkpoints = [e for e in history if isinstance(e, Checkpoint)]
        summary = RunSummary(
            status="completed",
            steps=last["step"],
            first_loss=rows[0]["loss"],
            final_loss=last["loss"],
            final_val_loss=last.get("val_loss"),
            tokens=last["tokens"],
            wall_s=spent.wall_s,
            attempt_wall_s=now - max(starts),
            goodput=spent.goodput,
            ledger=spent,
            restarts=len(starts) - 1,
            tokens_per_s=float(np.median(steady)),
            mfu=float(np.median([r["mfu"] for r in rows[1:] if r["mfu"]] or [0.0])),
            checkpoint_stall_s=[e.stall_s for e in checkpoints],
            param_fingerprints=list(fingerprints),
            checkpoint=str(self.root / store.tag_for(last["step"])),
            energy=_energy_summary(bill),
        )
        write_summary(self.run, summary)
        self.event(Completed(step=last["step"]))


def _injected_faults(rank: int, run: RunDir) -> Faults:
    try:
        return Faults.from_env(rank, run.faults)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def _energy_summary(bill: EnergyBill | None) -> dict | None:
    if not bill:
        return None
    return {key: getattr(bill.totals, key) for key in ("kwh", "facility_kwh", "kgco2e", "coverage", "j_per_token")}


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
