"""plan.json through its typed record: a plan written before the record held the planner's own types
(golden/plan-tiny-zero3-two-nodes.json, from `make_plan` of recipes/tiny-zero3-two-nodes.yaml at
main d92f83d) reads back typed and writes back byte for byte; a plan made today round-trips."""

import json
import shutil
from pathlib import Path

from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import HostMemoryRecord, MemoryRecord, plan_json, read_plan
from tests.helpers.planning import make_env
from tests.helpers.project import TINY

WRITTEN_BEFORE = Path(__file__).parent / "golden" / "plan-tiny-zero3-two-nodes.json"


def test_a_plan_written_before_reads_typed_and_writes_back_byte_for_byte(tmp_path):
    shutil.copy(WRITTEN_BEFORE, tmp_path / "plan.json")
    plan = read_plan(RunDir(tmp_path))
    memory, host = plan.memory_per_device, plan.host_memory_per_node
    assert isinstance(memory, MemoryRecord) and isinstance(host, HostMemoryRecord)
    written = json.loads(WRITTEN_BEFORE.read_text())
    assert (memory.total_bytes, memory.fits) == (written["memory_per_device"]["total_bytes"], True)
    assert memory.gather_buffer_bytes == 1048576 and host.partitioned and host.per_node_bytes == 3180800
    assert (plan.topology.world_size, plan.batch.global_batch_size, plan.batch.tokens_per_step) == (2, 16, 2048)
    assert plan_json(plan) == WRITTEN_BEFORE.read_text()


def test_a_figure_derived_from_the_others_is_derived_again_on_reading(tmp_path):
    written = json.loads(WRITTEN_BEFORE.read_text())
    written["topology"]["world_size"] = 99
    written["memory_per_device"]["fits"] = False
    (tmp_path / "plan.json").write_text(json.dumps(written))
    plan = read_plan(RunDir(tmp_path))
    assert plan.topology.world_size == 2 and plan.memory_per_device.fits


def test_a_plan_made_today_round_trips(tmp_path):
    plan = make_plan(load_recipe(TINY), make_env(tmp_path), run_dir=tmp_path / "run")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "plan.json").write_text(plan.files()["plan.json"])
    read = read_plan(run)
    assert plan_json(read) == plan.files()["plan.json"]
    assert (read.topology, read.batch, read.model, read.estimate) == (plan.topology, plan.batch, plan.record().model, plan.time)
    assert (read.memory_per_device, read.host_memory_per_node, read.commands) == (plan.memory, plan.host_memory, plan.processes)


def test_a_detached_plan_writes_its_launcher_unattached_and_nothing_else_changes(tmp_path):
    attached = make_plan(load_recipe(TINY), make_env(tmp_path))
    before, after = json.loads(plan_json(attached.record())), json.loads(plan_json(attached.detached().record()))
    assert "--attached" in before["commands"][0]["argv"] and "--attached" not in after["commands"][0]["argv"]
    before["commands"][0]["argv"].remove("--attached")
    assert before == after
