"""`orch sweep status|report SWEEP_DIR`: the trials ranked by the metric, the best one's recipe as
`best.yaml`, and an HTML page with the metric against each parameter and every trial's validation curve.

Read from the study's journal and the trials' run directories only: it works while the sweep runs.
"""

from __future__ import annotations

import html
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import DamagedRun, SweepError
from orchestrator.shared.filetree import Refused, read_file, shown
from orchestrator.rundir.bill import read_bill
from orchestrator.rundir.layout import RECIPE_FILE, RunDir
from orchestrator.sweep.study import PRUNED, SweepDir, read_study, slot_trials

MAX_RECIPE_BYTES = 1 << 20
"""A trial's resolved recipe is a few kilobytes; more is not one `orch sweep` wrote."""
_NOTE_CHARS = 300
"""A trial's note (why it failed or was pruned) as the table shows it: on one line, this long at most."""

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


@dataclass(frozen=True)
class TrialRow:
    slot: int
    state: str
    value: float | None
    params: dict[str, object]
    step: int
    steps: int
    kwh: float | None
    run_dir: Path
    note: str = ""


def trial_rows(sweep: SweepDir) -> tuple[list[TrialRow], str, str]:
    """The sweep's trials, best first (complete ones by the metric, then running, pruned, failed),
    with the metric's name and direction."""
    if not sweep.journal.exists():
        raise SweepError(f"{sweep.path} is not a sweep directory (no {sweep.journal.name}): give the directory `orch sweep` printed")
    recipe = sweep.read_recipe()
    spec = recipe.sweep
    study = read_study(sweep, recipe.name)
    rows = []
    for slot, trial in sorted(slot_trials(study).items()):
        run = RunDir(sweep.trial(slot))
        metrics = run.metric_rows() if run.metrics.exists() else []
        rows.append(TrialRow(
            slot=slot, state=STATES.get(trial.state.name, trial.state.name.lower()),
            value=trial.value if trial.state.name == "COMPLETE" else _last(trial.intermediate_values), params=dict(trial.params),
            step=metrics[-1]["step"] if metrics else 0, steps=recipe.train.steps, kwh=_kwh(run), run_dir=run.path,
            note=shown(str(trial.user_attrs.get("failure") or trial.user_attrs.get(PRUNED, "")))[:_NOTE_CHARS],
        ))
    sign = 1 if spec.direction == "minimize" else -1
    order = {"complete": 0, "running": 1, "waiting": 1, "pruned": 2, "failed": 3}
    rows.sort(key=lambda r: (order.get(r.state, 4), sign * r.value if r.value is not None and math.isfinite(r.value) else math.inf, r.slot))
    return rows, spec.metric, spec.direction


def best_trial(rows: list[TrialRow]) -> TrialRow:
    best = rows[0] if rows and rows[0].state == "complete" else None
    if best is None:
        raise SweepError("no trial of this sweep has completed yet")
    return best


def best_recipe(sweep: SweepDir, rows: list[TrialRow]) -> tuple[TrialRow, str]:
    """The best trial and its resolved recipe as `best.yaml` says it: `orch run best.yaml` trains it
    again. The trial's recipe is read as a listed file is (no link followed, bounded), and the first
    line names the sweep on one line whatever the directory is called."""
    best = best_trial(rows)
    try:
        recipe = read_file(best.run_dir, RECIPE_FILE, MAX_RECIPE_BYTES).decode()
    except (OSError, Refused, UnicodeDecodeError) as exc:
        why = exc.what if isinstance(exc, Refused) else getattr(exc, "strerror", None) or "not UTF-8 text"
        raise SweepError(f"the best trial {best.slot} has no readable recipe ({best.run_dir / RECIPE_FILE}: {why}): "
                         "its run directory was removed or changed; best.yaml was not written") from None
    again = f"orch run {shown(shlex.quote(str(sweep.best)))}"
    return best, f"# The best trial of sweep {shown(str(sweep.path))} (trial {best.slot}); train it again with: {again}\n{recipe}"


def render_status(rows: list[TrialRow], metric: str, direction: str, sweep: SweepDir) -> str:
    total_kwh = sum(r.kwh or 0.0 for r in rows)
    counts = {state: sum(r.state == state for r in rows) for state in ("complete", "pruned", "failed", "running")}
    lines = [f"sweep {sweep.path}: {len(rows)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}); "
             f"{metric} ({direction}); energy {total_kwh:.4g} kWh, pruned trials included",
             f"{'rank':<5} {'trial':<6} {'state':<9} {metric:>12} {'steps':>11} {'kWh':>10}  parameters"]
    for rank, r in enumerate(rows, 1):
        value = "" if r.value is None else f"{r.value:.4f}"
        kwh = "" if r.kwh is None else f"{r.kwh:.4g}"
        params = shown(", ".join(f"{k}={_fmt(v)}" for k, v in r.params.items()))
        note = f"  ({r.note})" if r.note else ""
        lines.append(f"{rank:<5} {r.slot:<6} {r.state:<9} {value:>12} {f'{r.step}/{r.steps}':>11} {kwh:>10}  {params}{note}")
    return "\n".join(lines)


def render_sweep_page(sweep: SweepDir) -> str:
    """The HTML page: the ranked table, the metric against each parameter, every trial's validation curve."""
    from orchestrator.watching.page import html_page, html_table, svg_chart

    rows, metric, direction = trial_rows(sweep)
    recipe = sweep.read_recipe()
    charts = []
    for key in recipe.sweep.parameters:
        by_state: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            x = r.params.get(key)
            if isinstance(x, (int, float)) and r.value is not None and math.isfinite(r.value):
                by_state.setdefault(r.state, []).append((float(x), r.value))
        charts.append(svg_chart(f"{metric} against {key}", by_state, key, metric, lines=False))
    curves = {f"trial {r.slot} ({r.state})": [(row["step"], row[metric]) for row in RunDir(r.run_dir).metric_rows()
                                              if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])]
              for r in rows if RunDir(r.run_dir).metrics.exists()}
    charts.append(svg_chart(f"{metric} of each trial", curves, "step", metric))
    table = html_table(["rank", "trial", "state", metric, "steps", "kWh", "parameters"],
                       [[str(i), str(r.slot), r.state + (f" ({r.note})" if r.note else ""), "" if r.value is None else f"{r.value:.4f}",
                         f"{r.step}/{r.steps}", "" if r.kwh is None else f"{r.kwh:.4g}",
                         ", ".join(f"{k}={_fmt(v)}" for k, v in r.params.items())] for i, r in enumerate(rows, 1)])
    sections = [f"<h1>Sweep {html.escape(recipe.name)}</h1>",
                f"<p>{html.escape(render_status(rows, metric, direction, sweep).splitlines()[0])}</p>",
                table, '<div class="charts">', *charts, "</div>"]
    return html_page(f"{recipe.name}: sweep report", sections)


def _last(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


def _kwh(run: RunDir) -> float | None:
    """The trial's energy at the facility, from its bill (written at the end of each attempt)."""
    try:
        bill = read_bill(run)
    except DamagedRun:
        return None
    return bill.totals.facility_kwh if bill else None


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
