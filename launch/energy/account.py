"""A rank's energy session: its monitor, and on rank 0 the run's bill and budget.

Rank 0 aggregates every rank's records (those of earlier attempts included) into `energy.json`
at each checkpoint and at the end, and every few seconds from its sampler thread, to keep the
budget check current without touching the training thread.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from launch.energy.meters import rank_meters
from launch.energy.monitor import EnergyMonitor, Monitor, NullMonitor
from orchestrator.shared.energy.bill import compute_bill
from orchestrator.energy.spec import EnergySpec
from orchestrator.rundir import events
from orchestrator.rundir.bill import BillTotals, EnergyBill, write_bill
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import EnergyRecord
from orchestrator.rundir.rows import EnergyBudgetExceeded, EnergyBudgetWarning

WATCH_INTERVAL_S = 5.0


def node_name() -> str:
    """Slurm's name for this node where there is one: emulated nodes can share a host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class EnergyAccount:
    """Rank 0's bill: aggregation into energy.json and the budget."""

    def __init__(self, run: RunDir, spec: EnergySpec, energy_plan: EnergyRecord, tokens_per_step: int):
        self.run, self.spec, self.energy_plan, self.tokens_per_step = run, spec, energy_plan, tokens_per_step
        self.step = 0
        self._lock = threading.Lock()  # the sampler thread and the training thread both settle
        self.latest: EnergyBill | None = None
        self.over_budget = False
        self._warned = False
        self._last_watch = 0.0
        self._previous: tuple[float, dict[tuple[str, str], float]] | None = None

    def settle(self, step: int | None = None) -> EnergyBill:
        """Aggregate now, write energy.json, check the budget; `step` is the last step trained."""
        with self._lock:
            if step is not None:
                self.step = step
            bill = compute_bill(self.run.path, self.energy_plan, self.tokens_per_step, self.step)
            write_bill(self.run, bill)
            self._append_series(bill)
            self.latest = bill
            self._check_budget(bill.totals)
            return bill

    def _append_series(self, bill: EnergyBill) -> None:
        """Each node's energy over time (`energy/series.jsonl`), for dashboards and the run report:
        the node's kWh so far, and the mean power since the previous point of the node and of each
        of its devices (`cpu_w`, `memory_w`, `gpu:<uuid>_w`)."""
        now = time.time()
        figures = {(node, "node"): entry.energy_j for node, entry in bill.nodes.items()}
        figures.update({(node, d.device): d.energy_j for node, d in bill.devices() if d.energy_j is not None})
        nodes: dict[str, dict] = {node: {"kwh": entry.kwh} for node, entry in bill.nodes.items()}
        if self._previous and now > self._previous[0]:
            elapsed = now - self._previous[0]
            for (node, device), joules in figures.items():
                before = self._previous[1].get((node, device))
                if before is not None:
                    nodes[node]["power_w" if device == "node" else f"{device}_w"] = (joules - before) / elapsed
        self._previous = (now, figures)
        self.run.energy_series.parent.mkdir(parents=True, exist_ok=True)
        events.append_row(self.run.energy_series, {"time": now, "step": self.step, "kwh": bill.totals.kwh, "nodes": nodes})

    def watch(self) -> None:
        """Called from rank 0's sampler thread after each sample."""
        if time.monotonic() - self._last_watch >= max(WATCH_INTERVAL_S, self.spec.interval_s):
            self._last_watch = time.monotonic()
            self.settle()

    def _check_budget(self, totals: BillTotals) -> None:
        used = [(totals.facility_kwh, self.spec.budget_kwh, "kWh"), (totals.kgco2e, self.spec.budget_kgco2e, "kgCO2e")]
        for value, budget, unit in used:
            if budget is None:
                continue
            if value > budget and not self.over_budget:
                self.over_budget = True
                events.append(self.run.events, EnergyBudgetExceeded(used=value, budget=budget, unit=unit, step=self.step))
            elif value > budget * self.spec.budget_warn_fraction and not self._warned:
                self._warned = True
                events.append(self.run.events, EnergyBudgetWarning(used=value, budget=budget, unit=unit, step=self.step))
                print(f"energy budget: {value:.4g} of {budget:g} {unit} used at step {self.step}", flush=True)

    @property
    def latest_kwh(self) -> float | None:
        return self.latest.totals.kwh if self.latest else None


class NullAccount:
    """Ranks other than 0, and runs without a monitor."""

    over_budget = False
    latest_kwh = None
    latest = None

    def settle(self, step: int | None = None) -> None:
        return None

    def watch(self) -> None:
        pass


def start_energy(spec: EnergySpec, energy: EnergyRecord, tokens_per_step: int, device: str, run: RunDir, rank: int,
                 local_rank: int) -> tuple[Monitor, EnergyAccount | NullAccount]:
    """This rank's monitor (sampling the devices it owns) and, on rank 0, the account it feeds, from
    the plan's energy section."""
    if not spec.enabled:
        return NullMonitor(), NullAccount()
    account = EnergyAccount(run, spec, energy, tokens_per_step) if rank == 0 else NullAccount()
    meters = rank_meters(local_rank, device == "cuda", energy.cpu, spec.memory_w_per_gib)
    if not meters:
        return NullMonitor(), account  # a CPU run's other local ranks own no device
    monitor = EnergyMonitor(meters, run.path, node_name(), rank, spec.interval_s, account.watch)
    return monitor.start(), account
