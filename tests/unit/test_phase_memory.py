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
    big = peaks.host_bytes["forward_backward"]
    assert big >= peaks.host.before_bytes + 60 * MIB and peaks.stretch_bytes == big
    del block
    peaks.begin()
    peaks.end("forward_backward")  # a smaller stretch of the same phase: the peak stays
    assert peaks.host_bytes["forward_backward"] == big and peaks.stretch_bytes < big - 60 * MIB
    between = bytearray(64 * MIB)  # after a phase ended and before the next began: no phase's
    del between
    peaks.begin()
    peaks.end("evaluation")
    assert peaks.host_bytes["evaluation"] < big - 60 * MIB
    assert peaks.device_bytes == {} and peaks.record().device_bytes is None


def test_an_engine_built_again_keeps_the_earlier_peaks():
    first, second = PhasePeaks(), PhasePeaks()
    first.host_bytes.update(forward_backward=5 * GIB, construction=1 * GIB)
    second.host_bytes.update(construction=2 * GIB, setup=3 * GIB)
    second.keep(first)
    assert second.host_bytes == {"construction": 2 * GIB, "setup": 3 * GIB, "forward_backward": 5 * GIB}
    assert second.startup().construction_peak_bytes == 2 * GIB and second.startup().setup_peak_bytes == 3 * GIB


def ranks() -> list[RankPhaseMemory]:
    return [RankPhaseMemory(GIB // 4, {"construction": GIB, "setup": GIB + GIB // 4, "forward_backward": 2 * GIB, "resume": 3 * GIB}, None),
            RankPhaseMemory(GIB // 2, {"construction": GIB, "setup": GIB + GIB // 4, "forward_backward": 3 * GIB}, None)]


def test_the_event_holds_every_rank_per_phase_and_reads_back(tmp_path):
    run = RunDir(tmp_path)
    written = events.append(run.events, MemoryPhases.of(8, ranks()))
    (read,) = run.history()
    assert read == written and read.host_peak_bytes["resume"] == [3 * GIB, None]
    assert list(read.host_peak_bytes) == ["construction", "setup", "forward_backward", "resume"]  # the run's order
    assert "device_peak_bytes" not in json.loads(run.events.read_text())  # a CPU run has none
    what, grown = read.growth_bytes()
    assert what.startswith("host") and grown["forward_backward"] == [2 * GIB - GIB // 4, 3 * GIB - GIB // 2]
    on_gpus = MemoryPhases.of(8, [RankPhaseMemory(GIB, {"setup": 2 * GIB}, {"setup": 5 * GIB})])
    assert on_gpus.growth_bytes() == ("device memory allocated", {"setup": [5 * GIB]})


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
    header, rank0, rank1 = (line.split() for line in lines[title + 1:title + 4])
    assert header == ["GiB", "construction", "set-up", "fwd/bwd", "resume", "plan"]
    assert rank0 == ["rank", "0", "0.750", "1.000", "1.750", "2.750", f"{planned / GIB:.3f}"]
    assert rank1 == ["rank", "1", "0.500", "0.750", "2.500", "-", f"{planned / GIB:.3f}"]
    page = render_run_page(run.path)
    assert "Peak memory per phase (step 8" in page and "<td>fwd/bwd</td>" not in page and "<th>fwd/bwd</th>" in page
    assert page.count("1.750") == 1  # in the table, not also in the status paragraph


def test_many_ranks_show_the_largest_and_smallest(tmp_path):
    run = planned_run(tmp_path, MemoryPhases.of(8, ranks() * 4))
    output = CliRunner().invoke(app, ["status", str(run.path)]).output
    assert [line.split()[:4] for line in output.splitlines() if line.split()[:1] in (["max"], ["min"])] == [
        ["max", "0.750", "1.000", "2.500"], ["min", "0.500", "0.750", "1.750"]]


def test_a_run_without_the_event_shows_no_table(tmp_path):
    assert "peak memory" not in CliRunner().invoke(app, ["status", str(planned_run(tmp_path).path)]).output
