"""Every Python process orch starts runs the project's modules, not ones of the same name in the
working directory: `python -m` puts that directory first on `sys.path`, so each starts with `-P`
(`orchestrator.rundir.entry.module_argv`)."""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.plan.planner import make_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.entry import module_argv, rank_argv
from orchestrator.slurm.batch import node_command
from orchestrator.slurm.script import render_array_sbatch, render_prepare_sbatch, render_sbatch, render_step_sbatch
from orchestrator.slurm.submit import cluster_env
from tests.helpers.planning import make_env
from tests.helpers.project import RECIPES, ROOT, TINY


PLANTED = "import pathlib, sys; pathlib.Path(__file__).with_name('ran').write_text(__file__); sys.exit(99)\n"


def planned_commands(tmp_path: Path) -> dict[str, list[str]]:
    """Each kind of Python process orch starts, as planned or rendered (a script's `exec` line)."""
    local = make_plan(load_recipe(TINY), make_env(tmp_path))
    slurm_recipe = load_recipe(TINY, ["distributed.nodes=2", "distributed.procs_per_node=1"])
    cluster = make_plan(slurm_recipe, cluster_env(make_env(tmp_path), slurm_recipe.recipe.slurm), run_dir=tmp_path / "run")
    sweep_recipe = load_recipe(RECIPES / "tiny-sweep.yaml", ["distributed.nodes=2", "distributed.procs_per_node=1"])
    sweep = make_plan(sweep_recipe, cluster_env(make_env(tmp_path), sweep_recipe.recipe.slurm), run_dir=tmp_path / "sweep")
    spec, python = slurm_recipe.recipe.slurm, "/venv/bin/python"
    scripts = {
        "batch step": render_sbatch(cluster, spec, python, 120),
        "sweep trial": render_array_sbatch(sweep, sweep_recipe.recipe.slurm, python, 120, [0, 1], 2),
        "preparation": render_prepare_sbatch(cluster, spec, python, [TINY]),
        "gate": render_step_sbatch(cluster, spec, python, "gate", ["gate", str(cluster.run_dir)]),
    }
    return {
        "local node launcher": local.processes[0].argv,
        "srun node launchers": node_command(cluster.record(), python, "n1", 21234),
        "rank": rank_argv(python, tmp_path / "run"),
        **{name: shlex.split(script.splitlines()[-1])[1:] for name, script in scripts.items()},
    }


def module_of(argv: list[str]) -> tuple[list[str], str]:
    """The interpreter's options before `-m`, and the module."""
    at = argv.index("-m")
    python = max(i for i in range(at) if not argv[i].startswith("-"))
    return argv[python + 1:at], argv[at + 1]


def test_every_planned_python_process_starts_with_safe_path(tmp_path):
    for name, argv in planned_commands(tmp_path).items():
        options, module = module_of(argv)
        assert options == ["-P"], f"{name}: {shlex.join(argv)}"
        assert module.startswith(("launch.", "orchestrator")), name


def test_no_python_process_is_started_by_module_but_through_module_argv():
    """The class, not only the commands above: a `-m` written anywhere else (the doctor's probe, the
    universal checkpoint conversion, the next entry point) would start Python with the working directory first."""
    entry = ROOT / "orchestrator" / "rundir" / "entry.py"
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in ("orchestrator", "launch")
        for path in sorted((ROOT / package).rglob("*.py")) if path != entry
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == "-m"
    ]
    assert not found, f"start Python through orchestrator.rundir.entry.module_argv: {found}"


def test_planted_modules_in_the_working_directory_do_not_run(tmp_path):
    """Real interpreters, started as planned, in a directory holding a `launch/` package and an
    `orchestrator.py` that would exit 99: each module runs its own `--help` (the project imported
    through its installation), and nothing planted ran."""
    cwd = tmp_path / "work"
    (cwd / "launch").mkdir(parents=True)
    (cwd / "launch" / "__init__.py").write_text(PLANTED)
    (cwd / "orchestrator.py").write_text(PLANTED)
    started = {tuple(module_of(argv)[0] + [module_of(argv)[1]]) for argv in planned_commands(tmp_path).values()}
    processes = {
        " ".join(command): subprocess.Popen([sys.executable, *command[:-1], "-m", command[-1], "--help"], cwd=cwd,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command in sorted(started)
    }
    for command, process in processes.items():
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"{command}: exit {process.returncode}\n{output}"
        assert "usage" in output.lower(), f"{command}: {output}"
    assert not (cwd / "ran").exists() and not (cwd / "launch" / "ran").exists()


def test_the_project_imports_with_safe_path_from_its_own_root():
    """An editable install (`pip install -e .`) finds the project through its finder, not the working directory."""
    result = subprocess.run(module_argv(sys.executable, "launch.node", "--help"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--nnodes" in result.stdout, result.stderr
