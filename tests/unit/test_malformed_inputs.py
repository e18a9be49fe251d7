"""A corpus of what careless users and crashes hand `orch`: malformed recipes (`corpus/`), malformed
overrides, and damaged run directories (built below). Every case runs the real CLI and must end in
a non-zero exit and at most a few readable lines saying what is wrong, never a traceback; damage that
`orch` must read past (a torn last line, one damaged run among others) must succeed instead.

Add a case here for every such input found in the field.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.records import recipe_yaml
from orchestrator.sweep.study import SweepDir
from tests.helpers.planning import write_plan
from tests.helpers.project import TINY
from tests.helpers.sweeps import SET_TRIAL_USER_ATTR, SWEEP, journal_record, make_sweep

CORPUS = Path(__file__).parent / "corpus"
MAX_LINES = 3
TORN = '{"step": 3, "loss": 1.9, "tok'
"""What a crash or a full disk leaves at the end of a JSON-lines log: a row cut short, no newline."""
NOT_ROWS = '{}\n[]\n1\n{"step": true, "loss": 1.0}\n{"step": 3, "loss": "x", "lr": null}\n{"step": "x"}\n'
"""JSON lines that parse but are no metric row (a hand edit, another tool's output): read past like a torn one."""
NOT_EVENTS = '{}\n[]\n{"event": 3}\n{"event": "start", "time": "x"}\n{"event": "checkpoint", "time": 1.0}\n'
"""The same for events: no name, a name or time of the wrong type, a checkpoint without its figures."""
NOT_POINTS = '{}\n{"t": "x"}\n[]\n{"time": 1.0, "step": 1, "kwh": 0.1, "nodes": {"n1": {}}}\n{"time": 2.0, "step": 2, "kwh": 0.2, "nodes": {"n1": {"kwh": 0.2}}}\n'
"""Lines of energy/series.jsonl that parse but are no point (the last one is), read past alike."""
ENERGY_PART = json.dumps([{"node": "n1", "device": "cpu", "kind": "cpu", "method": "estimated", "detail": "", "rank": 0, "pid": 1,
                           "start": 0.0, "end": 10.0, "seconds": 10.0, "energy_j": 1000.0, "by_phase": {"train": 1000.0},
                           "by_hour": {"0": 1000.0}, "train_j_at_save": {}, "first_step": 1, "last_step": 2}])
"""One rank's energy record, so that `orch energy` has a bill to make."""


@dataclass(frozen=True)
class Case:
    argv: Callable[[Path], list[str]]
    """The command line, given a fresh temporary directory to build damage in."""
    says: str
    """Part of the one readable line (or, for `succeeds`, of the output)."""
    succeeds: bool = False
    kept: str | None = None
    """A file (relative to the temporary directory) that must still be there afterwards: nothing lost."""


def recipe(name: str, *overrides: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["validate", str(CORPUS / name), *overrides]


def override(*overrides: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["validate", str(TINY), *overrides]


def run_dir(tmp: Path, name: str = "run", **damage: str | bytes) -> Path:
    """A run directory as `orch run` leaves it after two logged steps, then `damage`: file name ->
    content replacing it, or appended to it when the name starts with `+`."""
    run = tmp / name
    write_plan(run)
    (run / "recipe.yaml").write_text(recipe_yaml(load_recipe(TINY, [f"name={name}"]).recipe))
    (run / "events.jsonl").write_text(json.dumps({"event": "start", "time": 0.0}) + "\n")
    rows = [{"step": s, "loss": 2.0, "tokens_per_s": 100.0, "lr": 1e-3} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for file, content in damage.items():
        path = run / file.lstrip("+")
        data = content.encode() if isinstance(content, str) else content
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((path.read_bytes() if file.startswith("+") else b"") + data)
    return run


def on_run(command: str, **damage: str | bytes) -> Callable[[Path], list[str]]:
    return lambda tmp: [command, str(run_dir(tmp, **damage))]


def listing(**damage: str | bytes) -> Callable[[Path], list[str]]:
    """`orch runs` over a healthy run and a damaged one."""

    def argv(tmp: Path) -> list[str]:
        run_dir(tmp, "healthy")
        run_dir(tmp, "damaged", **damage)
        return ["runs", str(tmp)]

    return argv


def directory_recipe(tmp: Path) -> list[str]:
    (tmp / "recipes").mkdir()
    return ["validate", str(tmp / "recipes")]


def deeply_nested(tmp: Path) -> list[str]:
    path = tmp / "deep.yaml"
    path.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    return ["validate", str(path)]


def long_integer(tmp: Path) -> list[str]:
    """An integer past Python's 4,300-digit limit for reading one (was a ValueError traceback)."""
    path = tmp / "long.yaml"
    path.write_text(f"base: {TINY}\ntrain:\n  seed: 1{'0' * 5000}\n")
    return ["validate", str(path)]


def _recipe_as_directory(run: Path) -> Path:
    (run / "recipe.yaml").unlink()
    (run / "recipe.yaml").mkdir()
    return run


def fresh_into(target: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", str(TINY), "--fresh", "--run-dir", str(target(tmp))]


def user_directory(tmp: Path) -> Path:
    """A directory of the user's own (`--run-dir .` by mistake): not a run's, not empty."""
    (tmp / "project").mkdir()
    (tmp / "project" / "notes.txt").write_text("mine\n")
    return tmp / "project"


def project_with_recipe(tmp: Path) -> Path:
    """`--run-dir .` in a project that keeps its recipe there: a run would overwrite it."""
    project = user_directory(tmp)
    (project / "recipe.yaml").write_text("# mine\n")
    return project


def _link_recipe_outside(sweep: SweepDir) -> None:
    """The best trial's recipe swapped for a link to a file outside: best.yaml must not copy it."""
    recipe = sweep.trial(0) / "recipe.yaml"
    recipe.unlink()
    recipe.symlink_to("/etc/passwd")


def data_file(name: str, content: bytes, *overrides: str) -> Callable[[Path], list[str]]:
    """The tiny recipe on a data file of the user's with `content`; `{path}` in overrides is its path."""
    def argv(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(content)
        given = [o.replace("{path}", str(tmp / name)) for o in overrides] or [f"data.path={tmp / name}"]
        return ["validate", str(TINY), "data.builtin=null", *given]

    return argv


def data_directory(odd: Callable[[Path], object]) -> Callable[[Path], list[str]]:
    """The tiny recipe on a directory of data: a good file, and what `odd` puts beside it."""
    def argv(tmp: Path) -> list[str]:
        (tmp / "data").mkdir()
        (tmp / "data" / "a.jsonl").write_text('{"text": "x"}\n')
        odd(tmp / "data")
        return ["validate", str(TINY), "data.builtin=null", f"data.path={tmp / 'data'}"]

    return argv


def link_out_of(directory: Path) -> None:
    """A link to a file outside the data directory: it was read, and the manifest named only the link."""
    (directory.parent / "outside.jsonl").write_text('{"text": "not meant for training"}\n')
    (directory / "b.jsonl").symlink_to(directory.parent / "outside.jsonl")


def decontaminating(content: bytes) -> Callable[[Path], list[str]]:
    """The tiny recipe, removing from its data the n-grams of an evaluation file holding `content`."""
    def argv(tmp: Path) -> list[str]:
        (tmp / "eval.jsonl").write_bytes(content)
        return ["validate", str(TINY), f"data.decontaminate=[{tmp / 'eval.jsonl'}]"]

    return argv


def on_sweep(command: str, damage: Callable[[SweepDir], object]) -> Callable[[Path], list[str]]:
    """`orch sweep COMMAND` on a sweep directory with one complete and one running trial, then `damage`."""
    def argv(tmp: Path) -> list[str]:
        sweep = make_sweep(tmp / "sweep")
        damage(sweep)
        return ["sweep", command, str(sweep.path)]

    return argv


def journal_line(text: str, at: int | None = None) -> Callable[[SweepDir], None]:
    """A line put into the journal: appended, or inserted before line `at` (1-based)."""
    def damage(sweep: SweepDir) -> None:
        lines = sweep.journal.read_text().splitlines(keepends=True)
        lines.insert(len(lines) if at is None else at - 1, text)
        sweep.journal.write_text("".join(lines))

    return damage


def slot_of_trial_1(slot: object) -> Callable[[SweepDir], None]:
    return journal_line(journal_record(SET_TRIAL_USER_ATTR, trial_id=1, user_attr={"slot": slot}))


def sweep_recipe(content: str) -> Callable[[SweepDir], None]:
    return lambda sweep: sweep.recipe.write_text(content)


CASES = {
    # Recipes a user should not have given, and overrides mistyped.
    "binary-file": Case(recipe("binary.yaml"), "not a text file"),
    "recursive-anchor": Case(recipe("recursive-anchor.yaml"), "anchor is used inside itself"),
    "deeply-nested": Case(deeply_nested, "nested too deeply"),
    "directory-as-recipe": Case(directory_recipe, "is a directory"),
    "empty-file": Case(recipe("empty.yaml"), "required key is missing"),
    "top-level-list": Case(recipe("top-level-list.yaml"), "mapping of sections"),
    "invalid-yaml": Case(recipe("invalid-yaml.yaml"), "not valid YAML"),
    "wrong-types": Case(recipe("wrong-types.yaml"), "train.steps: input should be a valid integer"),
    "section-typo": Case(recipe("section-typo.yaml"), "did you mean `train`"),
    "missing-base": Case(recipe("missing-base.yaml"), "recipe file not found"),
    "missing-data-file": Case(recipe("missing-data-file.yaml"), "path does not exist"),
    "negative-batch": Case(recipe("negative-batch.yaml"), "train.micro_batch_size: input should be greater than 0"),
    "zero-heads": Case(recipe("zero-heads.yaml"), "model.num_heads: input should be greater than 0"),
    "world-not-dividing": Case(recipe("world-not-dividing.yaml"), "is not divisible"),
    "absurd-steps": Case(recipe("absurd-steps.yaml"), "train.steps: input should be less than"),
    "absurd-model": Case(recipe("absurd-model.yaml"), "model.hidden_size: input should be less than or equal"),
    "state-beyond-all-memory": Case(recipe("cannot-fit.yaml"), "no offload can fit it"),
    "activations-beyond-a-device": Case(recipe("activations-cannot-fit.yaml"), "activations alone"),
    "data-without-its-text-field": Case(data_file("rows.jsonl", b'{"body": "x"}\n'), "rows.jsonl has no `text` field (it has body)"),
    "data-not-json": Case(data_file("rows.jsonl", b"<html>\n"), "cannot read"),
    "data-not-parquet": Case(data_file("rows.parquet", b"PAR1 garbage"), "cannot read"),
    "mixture-weight-not-positive": Case(data_file("a.jsonl", b'{"text": "x"}\n', "data.sources=[{path: {path}, weight: 0}]"),
                                        "data.sources.0.weight: input should be greater than 0"),
    "mixture-key-typo": Case(data_file("a.jsonl", b'{"text": "x"}\n', "data.sources=[{path: {path}, wieght: 2}]"), "did you mean `weight`"),
    # Data that is not regular files (FIFOs and devices named by the recipe itself: test_data_paths.py, which a hang cannot block).
    "data-link-inside-directory": Case(data_directory(link_out_of), "b.jsonl is a symbolic link inside the data directory"),
    "data-fifo-inside-directory": Case(data_directory(lambda d: os.mkfifo(d / "b.jsonl")), "b.jsonl is a FIFO, not a regular file"),
    "decontaminate-directory": Case(lambda tmp: ["validate", str(TINY), f"data.decontaminate=[{tmp}]"], "is a directory, not a regular file"),
    "decontaminate-not-json": Case(decontaminating(b"{not json\n"), "eval.jsonl: its first row is not JSON"),
    "tokenizer-path-a-file": Case(override(f"data.tokenizer={{kind: pretrained, path: {TINY}}}"), "is a regular file, not a directory"),
    "override-double-dot": Case(override("train..steps=5"), "malformed override `train..steps=5`"),
    "override-leading-dot": Case(override(".steps=5"), "malformed override `.steps=5`"),
    "override-unknown-key": Case(override("train.stepz=5"), "did you mean `steps`"),
    "override-without-value": Case(override("train.steps"), "written `section.key=value`"),
    # Values no recipe means: each validated, then failed far from its cause (a rank, a bill, a sampler, a release).
    "lr-infinite": Case(override("train.optimizer.lr=.inf"), "train.optimizer.lr: input should be a finite number"),
    "lr-overflowing": Case(override("train.optimizer.lr=1e400"), "train.optimizer.lr: input should be a finite number"),
    "eps-nan": Case(override("train.optimizer.eps=.nan"), "train.optimizer.eps: input should be a finite number"),
    "betas-non-finite": Case(override("train.optimizer.betas=[.nan,.inf]"), "train.optimizer.betas.1: input should be a finite number"),
    "pue-nan": Case(override("energy.pue=.nan"), "energy.pue: input should be a finite number"),
    "sweep-range-infinite": Case(recipe("sweep-range-infinite.yaml"),
                                 "sweep.parameters.train.optimizer.lr.log_uniform.1: input should be a finite number"),
    "seed-negative": Case(override("train.seed=-1"), "train.seed: input should be greater than or equal to 0"),
    "seed-past-32-bits": Case(override("train.seed=4294967296"), "train.seed: input should be less than or equal to 4294967295"),
    "sweep-seed-negative": Case(recipe("sweep-seed-negative.yaml"), "sweep.seed: input should be greater than or equal to 0"),
    "integer-too-long": Case(long_integer, "train.seed: a 5,001-digit integer"),
    "integer-too-long-override": Case(override("train.seed=1" + "0" * 5000), "train.seed: a 5,001-digit integer"),
    "override-not-utf8": Case(override("description=caf\udce9"), "not UTF-8 text"),
    "escape-not-utf8": Case(recipe("surrogate-escape.yaml"), "description: not UTF-8 text"),
    "override-nested-too-deeply": Case(override("train.x=" + "[" * 5000), "nested too deeply"),
    # YAML that reads as something else than it says.
    "billion-laughs": Case(recipe("billion-laughs.yaml"), "billion-laughs.yaml:12: sweep.parameters.train.schedule.warmup_steps.choices.4: YAML aliases expand"),
    "duplicate-key": Case(recipe("duplicate-key.yaml"), "duplicate-key.yaml:6: train.steps: written twice (lines 4 and 6)"),
    # Run directories a crash, a full disk or a hand edit damaged.
    "torn-metrics-status": Case(on_run("status", **{"+metrics.jsonl": TORN}), "step 2/", succeeds=True),
    "torn-events-show": Case(on_run("show", **{"+events.jsonl": '{"event": "checkp'}), "latest         step 2", succeeds=True),
    "torn-metrics-runs": Case(listing(**{"+metrics.jsonl": TORN}), "2/150", succeeds=True),
    "torn-events-emit-only": Case(lambda tmp: ["submit", str(TINY), "--emit-only", "--run-dir",
                                               str(run_dir(tmp, **{"+events.jsonl": '{"event": "checkpoint", "st'}))],
                                  "#SBATCH", succeeds=True),
    "not-rows-metrics-status": Case(on_run("status", **{"+metrics.jsonl": NOT_ROWS}), "step 2/", succeeds=True),
    "not-rows-metrics-show": Case(on_run("show", **{"+metrics.jsonl": NOT_ROWS}), "latest         step 2", succeeds=True),
    "not-rows-metrics-runs": Case(listing(**{"+metrics.jsonl": NOT_ROWS}), "2/150", succeeds=True),
    "not-rows-report": Case(on_run("report", **{"+metrics.jsonl": NOT_ROWS, "+events.jsonl": NOT_EVENTS}), "report.html", succeeds=True),
    "not-points-report": Case(on_run("report", **{"energy/series.jsonl": NOT_POINTS}), "report.html", succeeds=True),
    "not-rows-energy": Case(on_run("energy", **{"+metrics.jsonl": NOT_ROWS, "+events.jsonl": NOT_EVENTS,
                                                "energy/parts/n1/rank0.json": ENERGY_PART}), "kWh", succeeds=True),
    "garbage-recipe-runs": Case(listing(**{"recipe.yaml": "name: [unclosed\n"}), "DAMAGED", succeeds=True),
    "garbage-slurm-runs": Case(listing(**{"slurm.json": "{not json"}), "slurm.json: damaged", succeeds=True),
    "garbage-recipe-status": Case(on_run("status", **{"recipe.yaml": "name: [unclosed\n"}), "recipe.yaml: damaged"),
    "binary-recipe-show": Case(on_run("show", **{"recipe.yaml": b"\xff\xfe\x00\x01"}), "recipe.yaml: damaged"),
    "garbage-slurm-status": Case(on_run("status", **{"slurm.json": "{not json"}), "slurm.json: damaged"),
    "garbage-slurm-cancel": Case(on_run("cancel", **{"slurm.json": "[4242]"}), "slurm.json: damaged"),
    "garbage-plan-checkpoints": Case(on_run("checkpoints", **{"plan.json": '{"run_dir": '}), "plan.json: damaged"),
    "garbage-summary-show": Case(on_run("show", **{"summary.json": '{"status": "compl'}), "summary.json: damaged"),
    "recipe-is-a-directory-status": Case(lambda tmp: ["status", str(_recipe_as_directory(run_dir(tmp)))], "recipe.yaml: damaged"),
    "not-a-run-status": Case(lambda tmp: ["status", str(tmp)], "not a run directory"),
    # Directories `orch run` must not take.
    "fresh-into-user-directory": Case(fresh_into(user_directory), "not a run directory", kept="project/notes.txt"),
    "fresh-into-root": Case(fresh_into(lambda tmp: Path("/")), "root directory"),
    "run-into-project-directory": Case(lambda tmp: ["run", str(TINY), "--run-dir", str(project_with_recipe(tmp))], "not a run directory",
                                       kept="project/recipe.yaml"),
    # Sweep directories a crash or a hand edit damaged: the journal and the recipe are kept as they are.
    "sweep-torn-journal-status": Case(on_sweep("status", journal_line('{"op_code":7,"worker_id":"w","tri')), "1 complete, 1 running",
                                      succeeds=True),
    "sweep-torn-journal-report": Case(on_sweep("report", journal_line('{"op_code":7,"worker_id":"w","tri')), "report.html",
                                      succeeds=True),
    "sweep-journal-garbage-line": Case(on_sweep("status", journal_line("garbage\n", at=4)),
                                       "study.journal: damaged (line 4: not a JSON record)", kept="sweep/study.journal"),
    "sweep-journal-not-an-object": Case(on_sweep("report", journal_line("[1, 2]\n", at=2)),
                                        "study.journal: damaged (line 2: not a journal record", kept="sweep/study.journal"),
    "sweep-journal-unknown-op-code": Case(on_sweep("status", journal_line(journal_record(99))),
                                          "study.journal: damaged (line 11: an unknown op code 99)", kept="sweep/study.journal"),
    "sweep-journal-record-missing-fields": Case(on_sweep("status", journal_line(journal_record(4))),
                                                "a record Optuna cannot replay: KeyError 'study_id'", kept="sweep/study.journal"),
    "sweep-journal-slot-string": Case(on_sweep("status", slot_of_trial_1("1")), "trial 1's slot is \"1\", not a whole number"),
    "sweep-journal-slot-float": Case(on_sweep("gate", slot_of_trial_1(1.5)), "trial 1's slot is 1.5, not a whole number"),
    "sweep-journal-slot-negative": Case(on_sweep("status", slot_of_trial_1(-1)), "trial 1's slot is -1, not a whole number"),
    "sweep-journal-result-not-a-number": Case(on_sweep("status", journal_line(journal_record(
        6, trial_id=1, state=1, values=["x"], datetime_complete="2026-01-01T00:00:00"))), "trial 1's result is [\"x\"], not one number"),
    "sweep-journal-two-results": Case(on_sweep("report", journal_line(journal_record(
        6, trial_id=1, state=1, values=[1.0, 2.0], datetime_complete="2026-01-01T00:00:00"))), "trial 1's result is [1.0, 2.0], not one number"),
    "sweep-journal-reported-value-not-a-number": Case(on_sweep("status", journal_line(journal_record(
        7, trial_id=1, step=10, intermediate_value="x"))), "trial 1's reported values are not numbers"),
    "sweep-journal-note-with-line-break": Case(on_sweep("status", journal_line(journal_record(
        8, trial_id=1, user_attr={"failure": "x\nrank  trial  forged"}))), "('x\\nrank  trial  forged')", succeeds=True),
    "sweep-best-trial-deleted": Case(on_sweep("status", lambda sweep: shutil.rmtree(sweep.trial(0))),
                                     "the best trial 0 has no readable recipe", kept="sweep/study.journal"),
    "sweep-best-trial-recipe-linked": Case(on_sweep("report", lambda sweep: _link_recipe_outside(sweep)),
                                           "the best trial 0 has no readable recipe", kept="sweep/study.journal"),
    "sweep-recipe-garbage": Case(on_sweep("status", sweep_recipe("name: [unclosed\n")), "recipe.yaml: damaged (not valid YAML",
                                 kept="sweep/study.journal"),
    "sweep-recipe-without-sweep": Case(on_sweep("report", sweep_recipe(recipe_yaml(load_recipe(TINY).recipe))), "has no `sweep` section",
                                       kept="sweep/study.journal"),
    "sweep-recipe-renamed": Case(on_sweep("status", sweep_recipe(recipe_yaml(load_recipe(SWEEP, ["name=other"]).recipe))),
                                 "holds no study named 'other'", kept="sweep/study.journal"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_a_readable_line(name, tmp_path):
    case = CASES[name]
    result = CliRunner().invoke(app, case.argv(tmp_path))
    assert case.says in result.output, result.output
    assert "Traceback" not in result.output
    if case.succeeds:
        assert result.exit_code == 0 and result.exception is None, result.output
        return
    # An exception the CLI did not turn into an exit (a bug) reaches CliRunner as itself, not SystemExit.
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, repr(result.exception)
    assert len(result.output.strip().splitlines()) <= MAX_LINES, result.output
    assert result.output.startswith("error: "), result.output
    if case.kept:
        assert (tmp_path / case.kept).is_file()
