"""`orch report RUN_DIR`: one self-contained HTML page about a run, for people who would rather look.

Plots are inline SVG drawn here (no plotting library, no scripts, nothing fetched), so the file
opens anywhere, offline: loss and validation loss, learning rate, throughput, each node's energy
over time, checkpoint stalls; then the goodput ledger (where the wall time went), the energy bill's
totals, each rank's peak memory per phase beside the plan's estimate, and the latest gate table.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

from orchestrator.gates.outcome import newest_report
from orchestrator.rundir.bill import read_bill
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.metric_rows import MetricRow
from orchestrator.rundir.rows import Checkpoint
from orchestrator.rundir.records import read_plan
from orchestrator.shared.goodput import GoodputLedger
from orchestrator.watching.phase_memory import latest_memory, memory_table, planned_bytes

WIDTH, HEIGHT, PAD = 640, 260, 44
LEFT, RIGHT = 72, 130  # room for tick labels, and for the legend
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")

Series = dict[str, list[tuple[float, float]]]


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high == low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


def svg_chart(title: str, series: Series, x_label: str, y_label: str, lines: bool = True) -> str:
    """A line chart (or points alone, `lines=False`); empty series are left out, and a chart with
    nothing to show says so instead of drawing empty axes."""
    series = {name: points for name, points in series.items() if points}
    head = f'<figure><figcaption>{html.escape(title)}</figcaption>'
    if not series:
        return head + '<p class="empty">nothing recorded</p></figure>'
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 1 if y0 else -1, y1 + 1 if y1 else 1
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)

    def sy(y: float) -> float:
        return HEIGHT - PAD - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<line x1="{LEFT}" y1="{HEIGHT - PAD}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - PAD}" stroke="#333"/>',
             f'<line x1="{LEFT}" y1="{PAD}" x2="{LEFT}" y2="{HEIGHT - PAD}" stroke="#333"/>']
    for tick in _ticks(x0, x1):
        parts.append(f'<text x="{sx(tick):.1f}" y="{HEIGHT - PAD + 16}" font-size="11" text-anchor="middle">{tick:.4g}</text>')
    for tick in _ticks(y0, y1):
        parts.append(f'<text x="{LEFT - 6}" y="{sy(tick) + 4:.1f}" font-size="11" text-anchor="end">{tick:.3g}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{sy(tick):.1f}" x2="{WIDTH - RIGHT}" y2="{sy(tick):.1f}" stroke="#eee"/>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" font-size="12" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{HEIGHT / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {HEIGHT / 2})">{html.escape(y_label)}</text>')
    for index, (name, points) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        if lines and len(points) > 1:
            parts.append(f'<polyline class="series" data-name="{html.escape(name)}" data-points="{len(points)}" fill="none" '
                         f'stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for x, y in points if len(points) <= 40 or not lines else []:
            parts.append(f'<circle class="point" data-name="{html.escape(name)}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 8}" y="{PAD + 14 * index}" font-size="11" fill="{colour}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return head + "".join(parts) + "</figure>"


def _points(rows: list[MetricRow], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def _energy_series(run: RunDir) -> Series:
    points = run.energy_points()
    start = points[0].time if points else 0.0
    series: Series = {}
    for point in points:
        for node, kwh in point.kwh_by_node.items():
            series.setdefault(node, []).append((point.time - start, kwh * 1000))
    return series


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_run_page(run_dir: Path) -> str:
    from orchestrator.watching.status import run_status

    run = RunDir(run_dir)
    status = run_status(run.path)
    rows = run.metric_rows()
    history = run.history()
    stalls = [(e.step, e.stall_s) for e in history if isinstance(e, Checkpoint)]
    charts = [
        svg_chart("Loss", {"training loss": _points(rows, "loss"), "validation loss": _points(rows, "val_loss")}, "step", "loss"),
        svg_chart("Learning rate", {"lr": _points(rows, "lr")}, "step", "learning rate"),
        svg_chart("Throughput", {"tokens/s": _points(rows, "tokens_per_s")}, "step", "tokens per second"),
        svg_chart("Energy per node", _energy_series(run), "seconds since the first point", "Wh (cumulative)"),
        svg_chart("Checkpoint stalls", {"stall": stalls}, "step", "seconds training was blocked", lines=False),
    ]
    sections = [f"<h1>{html.escape(status.name)}</h1>", f"<p>{html.escape(dataclasses.replace(status, memory=()).line())}</p>", '<div class="charts">', *charts, "</div>"]
    if status.ledger and status.ledger.wall_s:
        sections += ["<h2>Goodput</h2>", _ledger_table(status.ledger)]
    memory = latest_memory(history)
    if memory:
        header, *table = memory_table(memory, planned_bytes(read_plan(run) if run.plan.exists() else None))
        sections += [f"<h2>Peak memory per phase (step {memory.step}, {memory.figures()[0]})</h2>", html_table(header, table)]
    bill = read_bill(run)
    if bill:
        t = bill.totals
        sections += ["<h2>Energy and carbon</h2>", html_table(
            ["IT kWh", "measured kWh", "estimated kWh", "coverage", "PUE", "kgCO2e", "intensity g/kWh", "source"],
            [[f"{t.kwh:.6g}", f"{t.measured_kwh:.6g}", f"{t.estimated_kwh:.6g}", f"{t.coverage:.0%}", f"{t.pue:g}",
              f"{t.kgco2e:.6g}", f"{t.intensity.g_per_kwh:.1f}", t.intensity.source]],
        )]
    report = newest_report(run)
    if report:
        sections += [f"<h2>Gates ({html.escape(report.checkpoint)}: {'passed' if report.passed else 'FAILED'})</h2>", html_table(
            ["gate", "required", "status", "value", "limit", "evidence"],
            [[r.name, "yes" if r.required else "no", r.status, "" if r.value is None else f"{r.value:.4g}",
              "" if r.threshold is None else f"{r.threshold:.4g}", r.summary] for r in report.results],
        )]
    return html_page(f"{status.name}: run report", sections)


def _ledger_table(spent: GoodputLedger) -> str:
    """Where the wall time went: productive step time and each badput cause, in seconds and as a share."""
    parts = {"productive": spent.productive_s, **spent.by_cause()}
    rows = [["seconds", *(f"{s:.1f}" for s in parts.values()), f"{spent.wall_s:.1f}"],
            ["share", *(f"{s / spent.wall_s:.1%}" for s in parts.values()), "100%"]]
    if spent.energy_kwh is not None:  # the bill's phases, where one maps onto the cause
        rows.append(["IT Wh", *(f"{spent.energy_kwh[p] * 1000:.3g}" if p in spent.energy_kwh else "-" for p in parts),
                     f"{sum(spent.energy_kwh.values()) * 1000:.3g}"])
    return html_table(["", *parts, "wall"], rows)


def html_page(title: str, sections: list[str]) -> str:
    """A self-contained page (no script, no external file) around the sections."""
    style = ("body{font-family:sans-serif;margin:24px;color:#222}.charts{display:flex;flex-wrap:wrap;gap:16px}"
             "figure{margin:0}figcaption{font-weight:bold;margin-bottom:4px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}.empty{color:#888}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")
