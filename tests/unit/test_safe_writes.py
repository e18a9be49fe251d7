"""Every file the planes write goes through `filetree.write_file`: whole, and never through a link
planted at its name or at a temporary name beside it (a fixed `.name.tmp` opened with `write_text`
once followed such a link and overwrote a file outside the run)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from launch.energy.monitor import EnergyMonitor
from orchestrator.shared.checkpoint.store import write_durably
from orchestrator.cli import app
from orchestrator.shared.filetree import write_file
from orchestrator.rundir.layout import RunDir
from tests.helpers.sweeps import make_sweep

OUTSIDE = "the user's own file\n"


WRITERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "RunDir.write_file": ("summary.json", lambda directory: RunDir(directory).write_file("summary.json", "{}")),
    "write_durably": ("latest", lambda directory: write_durably(directory / "latest", "step-00000002")),
}
"""Each writer with the name it writes, known in advance, so a link can be planted there first."""


def _plant(link: Path, directory: Path) -> Path:
    outside = directory.parent / f"outside-{link.name}"
    outside.write_text(OUTSIDE)
    link.symlink_to(outside)
    return outside


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("planted", ["at its name", "at the old temporary name"])
def test_a_write_replaces_a_planted_link_and_never_writes_through_it(tmp_path, writer, planted):
    directory = tmp_path / "run"
    directory.mkdir()
    name, write = WRITERS[writer]
    target = directory / name
    outside = _plant(target if planted == "at its name" else target.with_name(f".{name}.tmp"), directory)
    write(directory)
    assert outside.read_text() == OUTSIDE
    assert stat.S_ISREG(os.lstat(target).st_mode) and target.read_text()
    assert not list(directory.glob(f".{name}.*.tmp"))  # no temporary file left behind


def test_the_energy_record_is_written_beside_a_planted_link_not_through_it(tmp_path):
    monitor = EnergyMonitor([], tmp_path / "run", "n", 0, 1.0, clock=lambda: 1.0)
    monitor.path.parent.mkdir(parents=True)
    outside = _plant(monitor.path.with_name(f".{monitor.path.name}.tmp"), tmp_path)
    monitor.flush()
    assert outside.read_text() == OUTSIDE and monitor.path.is_file()


def test_a_new_file_gets_the_usual_mode_and_a_failed_write_leaves_nothing(tmp_path):
    write_file(tmp_path / "a.txt", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o666 & ~_umask()
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_file(tmp_path / "dir", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("command, name", [("status", "best.yaml"), ("report", "best.yaml"), ("report", "report.html")])
def test_a_sweeps_outputs_replace_planted_links(tmp_path, command, name):
    sweep = make_sweep(tmp_path / "sweep")
    outside = _plant(sweep.path / name, sweep.path)
    result = CliRunner().invoke(app, ["sweep", command, str(sweep.path)])
    assert result.exit_code == 0, result.output
    assert outside.read_text() == OUTSIDE and stat.S_ISREG(os.lstat(sweep.path / name).st_mode)


def test_orch_report_replaces_a_planted_link_and_an_unwritable_target_is_one_line(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    run = sweep.trial(0)
    (run / "events.jsonl").write_text('{"event": "start", "time": 0.0}\n')
    outside = _plant(run / "report.html", run)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert outside.read_text() == OUTSIDE and stat.S_ISREG(os.lstat(run / "report.html").st_mode)
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("error: cannot write") and "Traceback" not in result.output
