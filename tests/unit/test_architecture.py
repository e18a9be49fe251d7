"""The two planes keep to their contract, read from the source's imports (module-level and inside
functions alike; imports for type checking only are left out):

- the control plane (`orchestrator`) never imports the node plane (`launch`): it starts it by argv;
- the node plane reaches only the contract (the run directory's records, the recipe's specs, the
  exit codes) and the libraries both planes share, never the CLI, the planner, Slurm submission,
  the gates or the reports;
- the run-directory package does not reach the planner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SPECS = ("orchestrator.backends.spec", "orchestrator.checkpoint.spec", "orchestrator.data.spec", "orchestrator.energy.spec",
         "orchestrator.gates.spec", "orchestrator.release.card_spec", "orchestrator.model.spec", "orchestrator.slurm.spec",
         "orchestrator.recovery.spec", "orchestrator.sweep.spec", "orchestrator.tracking.spec", "orchestrator.train.spec")
SHARED_WITH_THE_NODES = {
    "orchestrator.rundir": "the contract: the run directory's layout, its records and logs, the node plane's argv",
    "orchestrator.errors": "the exit codes both planes end with",
    "orchestrator.spec": "the base every section's spec derives from",
    "orchestrator.recipe.schema": "the resolved recipe, which every rank reads",
    **{spec: "a section of the recipe, which the recipe composes" for spec in SPECS},
    "orchestrator.hooks": "the markers a recipe's custom sink must carry (public: user code imports it)",
    "orchestrator.shared": "code both planes run: building the model, reading prepared data, checkpoint storage, the energy "
                           "bill, the dashboards, the LR schedule, the safe file tree, the machine's figures, offline mode",
}
NEVER_FROM_THE_NODES = ("orchestrator.cli", "orchestrator.plan", "orchestrator.slurm.submit", "orchestrator.gates.evaluate",
                        # starting a run (its directory, the attempt lock, the launchers), inspecting runs, releasing
                        "orchestrator.starting", "orchestrator.watching", "orchestrator.release.publish",
                        # preparation (curation, tokenizer training): a rank reads prepared data through data.prepared
                        "orchestrator.data.prepare")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in ("orchestrator", "launch") for p in (ROOT / package).rglob("*.py")}


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports, with the packages they sit in (importing a module runs its
    package's `__init__` first)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    with_packages = set()
    for name in found:
        parts = name.split(".")
        with_packages.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in with_packages if name in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    return seen


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_control_plane_never_imports_the_node_plane():
    edges = graph()
    crossings = sorted(f"{name} -> {target}" for name, targets in edges.items() if _within(name, ("orchestrator",))
                       for target in targets if _within(target, ("launch",)))
    assert not crossings


def node_plane_reaches_beyond(edges: dict[str, set[str]]) -> list[str]:
    """The control-plane modules the node plane reaches outside the shared ones, or that it must never reach."""
    reached = set().union(*(reachable(name, edges) for name in edges if _within(name, ("launch",))))
    control = {name for name in reached if _within(name, ("orchestrator",))}
    packages = {name for name in control if (modules()[name].name == "__init__.py")}
    outside = {name for name in control - packages if not _within(name, tuple(SHARED_WITH_THE_NODES))}
    return sorted(outside | {name for name in control if _within(name, NEVER_FROM_THE_NODES)})


def test_the_node_plane_reaches_only_the_contract_and_shared_libraries():
    assert node_plane_reaches_beyond(graph()) == []


@pytest.mark.parametrize("probe", ["orchestrator.data.prepare", "orchestrator.starting.execute", "orchestrator.watching.status",
                                   "orchestrator.release.publish", "orchestrator.checkpoint.export"])
def test_a_rank_importing_control_plane_code_breaks_the_rule(probe):
    """The rule can fail: one import of a control-plane module from the rank's process is caught."""
    edges = graph()
    edges["launch.rank"] = edges["launch.rank"] | {probe}
    assert probe in node_plane_reaches_beyond(edges)


def test_the_run_directory_package_does_not_reach_the_planner():
    edges = graph()
    reached = set().union(*(reachable(name, edges) for name in edges if _within(name, ("orchestrator.rundir",))))
    assert sorted(name for name in reached if _within(name, ("orchestrator.plan", "orchestrator.cli", "launch"))) == []


def test_the_walk_sees_imports_inside_functions():
    """So a lazy import cannot hide a crossing: the rank's engine is imported inside a function."""
    edges = graph()
    assert "launch.engines" in edges["launch.rank"] and "orchestrator.shared.model.build" in edges["launch.engines.deepspeed"]
    assert "orchestrator.backends.registry" in edges["orchestrator.checkpoint.export"]  # imported inside a function
