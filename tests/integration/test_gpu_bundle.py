"""The GPU check's two scripts as the README runs them, on this machine. `scripts/gpu-bundle.sh` builds a bundle
for this interpreter's Python from PyPI (a wheel built here for each package PyPI has only an sdist of);
`scripts/gpu-check.sh --install-only` installs it with no index into a fresh venv stacked, as on the GPU
machine, on a stand-in for that machine's own packages (torch, transformers and what the bundle leaves to
the machine, linked from the project's venv); then `scripts/gpu-check.sh --smoke` runs the check's five steps
on CPU from that venv, on the carried data."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.helpers.project import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # bench/ holds scripts that import each other by bare name, not a package
import gpu_bundle  # noqa: E402

sys.path.remove(str(ROOT / "bench"))

pytestmark = pytest.mark.integration


def script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`bash scripts/NAME ARGS` from the repository root with `env` added; stdout and stderr together."""
    return subprocess.run(["bash", f"scripts/{name}", *args], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)


@pytest.fixture(scope="module")
def bundle(data_cache) -> Path:
    """A bundle for this interpreter, built afresh. It lies in the tests' cache, not a temporary directory,
    because the corpus's path is part of the prepared data's cache key: at the same path each time, its data
    (a minute to prepare) is copied from the tests' data cache instead of prepared again."""
    root = data_cache / "gpu-bundle"
    shutil.rmtree(root, ignore_errors=True)
    result = script("gpu-bundle.sh", GPU_BUNDLE=str(root), GPU_PYTHON=platform.python_version(), PY=sys.executable)
    assert result.returncode == 0, result.stdout
    (root / "build.log").write_text(result.stdout)
    return root


def machine_python(at: Path) -> Path:
    """A Python that holds, as the GPU machine's does, what the bundle leaves to the machine (torch,
    transformers, accelerate, pyarrow, ... and what they require), linked from the project's venv."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(at)], check=True)
    site = next((at / "lib").glob("python3*/site-packages"))
    todo = [d.metadata["Name"] for d in metadata.distributions()
            if (gpu_bundle.PROVIDED.match(canonicalize_name(d.metadata["Name"])) or
                canonicalize_name(d.metadata["Name"]) in gpu_bundle.PRESENT_LARGE)
            and canonicalize_name(d.metadata["Name"]) != "orchestrator"]
    done: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in done:
            continue
        done.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement this venv lacks
        todo += [r.name for r in map(Requirement, dist.requires or []) if r.marker is None or r.marker.evaluate({"extra": ""})]
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}:
            if not (site / top).exists():
                (site / top).symlink_to(Path(dist.locate_file(top)))
    return at / "bin" / "python"


@pytest.fixture(scope="module")
def check_venv(bundle, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """`gpu-check.sh --install-only` into a fresh venv; the venv and the environment that ran it."""
    work = tmp_path_factory.mktemp("gpu-check")
    # DeepSpeed compiles its CPU collective op again for the fresh venv (a GPU needs none), into the venv: the
    # project venv's build is another source path, and ranks of other tests would rebuild it after this one.
    env = {"PYTHON": str(machine_python(work / "machine")), "GPU_CHECK_VENV": str(work / "venv"), "GPU_BUNDLE": str(bundle),
           "OUT": str(work / "out")}
    result = script("gpu-check.sh", "--install-only", **env)
    assert result.returncode == 0, result.stdout
    assert re.search(r"^gpu-check: install resolved in \d+ s", result.stdout, re.M), result.stdout
    return work / "venv", env


def test_the_bundle_has_a_wheel_for_the_target_of_every_pin_built_here_where_pypi_has_none(bundle):
    log = (bundle / "build.log").read_text()
    pins = dict(line.split("==") for line in (bundle / "wheels.txt").read_text().split())
    wheels = {parse_wheel_filename(w.name)[0]: w for w in (bundle / "wheels").iterdir()}
    assert set(wheels) == set(pins) | {"orchestrator"}, "one wheel per pin, and the project's"
    assert all(str(parse_wheel_filename(w.name)[1]) == pins[name] for name, w in wheels.items() if name != "orchestrator")
    target = gpu_bundle.Target(platform.python_version())
    assert all(target.fits(w) for w in wheels.values())
    built = re.search(r"built from sdists \(PyPI has no wheel for it\): ([^;]+);", log)
    assert built, log
    built_names = set(built.group(1).split(", "))
    assert "deepspeed" in built_names and built_names <= set(pins)  # DeepSpeed has never had a wheel on PyPI
    assert all(parse_wheel_filename(wheels[n].name)[3] == parse_wheel_filename("x-1-py3-none-any.whl")[3] for n in built_names)
    assert re.search(r"total [\d.]+ MiB \(limit 60\)", log)


def test_the_bundle_installs_offline_into_a_fresh_venv_beside_the_machines_packages(bundle, check_venv, tmp_path):
    venv, _ = check_venv
    probe = ("import json, orchestrator, deepspeed, lm_eval, rouge_score, sqlitedict, datasets, torch, transformers\n"
             "print(json.dumps({m.__name__: m.__file__ for m in (orchestrator, deepspeed, lm_eval, rouge_score, sqlitedict, "
             "datasets, torch, transformers)}))")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    where = {name: Path(path) for name, path in json.loads(result.stdout.splitlines()[-1]).items()}  # after DeepSpeed's notice
    for carried in ("orchestrator", "deepspeed", "lm_eval", "rouge_score", "sqlitedict", "datasets"):
        assert where[carried].is_relative_to(venv), f"{carried} from {where[carried]}, not from the carried wheels"
    for provided in ("torch", "transformers"):
        assert not where[provided].is_relative_to(venv), f"{provided} was installed over the machine's own"
    carried = {canonicalize_name(line.split("==")[0]) for line in (bundle / "wheels.txt").read_text().split()} | {"orchestrator"}
    complaints = (venv / "pip-check.txt").read_text()
    unmet = re.findall(r"^(\S+) \S+ requires ([\w.-]+), which is not installed", complaints, re.M)
    missing = {canonicalize_name(needed) for needer, needed in unmet if canonicalize_name(needer) in carried}
    assert missing <= set(gpu_bundle.LEFT_OUT), complaints


def test_the_gpu_check_runs_its_five_steps_on_cpu_in_its_smoke_mode(check_venv, tmp_path):
    venv, env = check_venv
    out = tmp_path / "out"
    result = script("gpu-check.sh", "--smoke", "--runs", str(tmp_path / "runs"), **{**env, "OUT": str(out)})
    rank_logs = "".join(f"\n--- {log.name}\n{log.read_text()}" for log in out.glob("*-rank-0.log"))
    assert result.returncode == 0, result.stdout + rank_logs
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["ok"] and report["smoke"]
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == ["setup", "dry_run", "bf16", "energy", "gates", "zero3"]
    assert steps["setup"]["summary"]["install"] == "resolved"
    assert steps["dry_run"]["summary"]["data"] == "carried" and steps["bf16"]["summary"]["data"] == "carried"
    assert [steps[name]["summary"]["steps"] for name in ("dry_run", "bf16", "zero3")] == [5, 20, 4]
    assert steps["gates"]["summary"]["gates"], "the gates ran on the bf16 run's checkpoint"
    assert (out / "gpu-check.log").read_text().rstrip().splitlines()[-1].startswith("gpu check: every step passed")
