"""Each rank's peak memory per phase of a run (issue 32): `launch.memory.PhasePeaks` laps, the
`memory_phases` event it feeds, and the table `orch status` and `orch report` show beside the plan's
estimate."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from launch.memory import PhasePeaks
from orchestrator.cli import app
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir import events
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.memory_phases import MemoryPhases, RankPhaseMemory
from orchestrator.rundir.records import read_plan, recipe_yaml
from orchestrator.watching.page import render_run_page
from tests.helpers.planning import write_plan
from tests.helpers.project import TINY

MIB = 2**20
GIB = 2**30


def test_each_phase_keeps_its_largest_stretch_and_nothing_between_phases():
    peaks = PhasePeaks()
    peaks.begin()
    block = bytearray(64 * MIB)  # zero-filled: every page touched
    peaks.end("forward_backward")
    big = peaks.host.peak_bytes["forward_backward"]
    assert big >= peaks.host.tracker.before_bytes + 60 * MIB and peaks.stretch_bytes == big
    assert peaks.host.grown_bytes["forward_backward"] >= 60 * MIB
    peaks.begin()
    peaks.end("optimizer_step")  # the block is still resident: a peak as high, but nothing taken
    assert peaks.host.peak_bytes["optimizer_step"] >= big - MIB and peaks.host.grown_bytes["optimizer_step"] < 8 * MIB
    del block
    peaks.begin()
    peaks.end("forward_backward")  # a smaller stretch of the same phase: the peak stays
    assert peaks.host.peak_bytes["forward_backward"] == big and peaks.stretch_bytes < big - 60 * MIB
    between = bytearray(64 * MIB)  # after a phase ended and before the next began: no phase's
    del between
    peaks.begin()
    peaks.end("evaluation")
    assert peaks.host.peak_bytes["evaluation"] < big - 60 * MIB
    assert peaks.device is None and peaks.record().device_bytes is None


def test_an_engine_built_again_keeps_the_earlier_peaks():
    first, second = PhasePeaks(), PhasePeaks()
    first.host.keep({"forward_backward": 5 * GIB, "construction": 1 * GIB}, {"forward_backward": 1 * GIB})
    second.host.keep({"construction": 2 * GIB, "setup": 3 * GIB}, {"setup": 2 * GIB})
    second.keep(first)
    assert second.host.peak_bytes == {"construction": 2 * GIB, "setup": 3 * GIB, "forward_backward": 5 * GIB}
    assert second.host.grown_bytes == {"setup": 2 * GIB, "forward_backward": 1 * GIB}
    assert second.startup().construction_peak_bytes == 2 * GIB and second.startup().setup_peak_bytes == 3 * GIB


def ranks() -> list[RankPhaseMemory]:
    return [RankPhaseMemory(GIB // 4, {"construction": GIB, "setup": GIB + GIB // 4, "forward_backward": 2 * GIB, "resume": 3 * GIB},
                            {"construction": GIB // 2, "setup": GIB // 4, "forward_backward": GIB // 8, "resume": GIB}, None, None),
            RankPhaseMemory(GIB // 2, {"construction": GIB, "setup": GIB + GIB // 4, "forward_backward": 3 * GIB},
                            {"construction": GIB // 2, "setup": GIB // 4, "forward_backward": GIB}, None, None)]


def test_the_event_holds_every_rank_per_phase_and_reads_back(tmp_path):
    run = RunDir(tmp_path)
    written = events.append(run.events, MemoryPhases.of(8, ranks()))
    (read,) = run.history()
    assert read == written and read.host_peak_bytes["resume"] == [3 * GIB, None]
    assert list(read.host_peak_bytes) == ["construction", "setup", "forward_backward", "resume"]  # the run's order
    what, above, grown = read.figures()
    assert what.startswith("host") and above["forward_backward"] == [2 * GIB - GIB // 4, 3 * GIB - GIB // 2]
    assert grown["forward_backward"] == [GIB // 8, GIB] and grown["resume"] == [GIB, None]
    assert "device_peak_bytes" not in json.loads(run.events.read_text())  # a CPU run has none
    on_gpus = MemoryPhases.of(8, [RankPhaseMemory(GIB, {"setup": 2 * GIB}, {"setup": GIB}, {"setup": 5 * GIB}, {"setup": 4 * GIB})])
    assert on_gpus.figures() == ("device memory allocated", {"setup": [5 * GIB]}, {"setup": [4 * GIB]})


def planned_run(tmp_path, *history):
    run = RunDir(tmp_path / "run")
    write_plan(run.path)
    (run.path / "recipe.yaml").write_text(recipe_yaml(load_recipe(TINY, ["name=phases"]).recipe))
    for event in history:
        events.append(run.events, event)
    return run


def test_status_and_report_show_each_phase_per_rank_beside_the_plan(tmp_path):
    run = planned_run(tmp_path, MemoryPhases.of(4, ranks()[:1]), MemoryPhases.of(8, ranks()))
    planned = read_plan(run).memory_per_device.total_bytes
    output = CliRunner().invoke(app, ["status", str(run.path)]).output
    lines = output.splitlines()
    title = next(i for i, line in enumerate(lines) if "peak memory per phase" in line)
    assert "(step 8" in lines[title]  # the latest event
    header, rank0, grown0, rank1, grown1 = (line.split() for line in lines[title + 1:title + 6])
    plan = f"{planned / GIB:.3f}"
    assert header == ["GiB", "construction", "set-up", "fwd/bwd", "resume", "plan"]
    assert rank0 == ["rank", "0", "0.750", "1.000", "1.750", "2.750", plan]
    assert grown0 == ["grown", "in", "phase", "0.500", "0.250", "0.125", "1.000"]  # the plan estimates peaks
    assert rank1 == ["rank", "1", "0.500", "0.750", "2.500", "-", plan]
    assert grown1 == ["grown", "in", "phase", "0.500", "0.250", "1.000", "-"]
    page = render_run_page(run.path)
    assert "Peak memory per phase (step 8" in page and "<td>fwd/bwd</td>" not in page and "<th>fwd/bwd</th>" in page
    assert page.count("1.750") == 1  # in the table, not also in the status paragraph


def test_many_ranks_show_the_largest_and_smallest(tmp_path):
    run = planned_run(tmp_path, MemoryPhases.of(8, ranks() * 4))
    output = CliRunner().invoke(app, ["status", str(run.path)]).output
    assert [line.split()[:4] for line in output.splitlines() if line.split()[:1] in (["max"], ["min"])] == [
        ["max", "0.750", "1.000", "2.500"], ["min", "0.500", "0.750", "1.750"], ["max", "grown", "in", "phase"]]
    assert output.splitlines()[-1].split()[4:7] == ["0.500", "0.250", "1.000"]


def test_a_run_without_the_event_shows_no_table(tmp_path):
    assert "peak memory" not in CliRunner().invoke(app, ["status", str(planned_run(tmp_path).path)]).output
