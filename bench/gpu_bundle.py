"""What the GPU check carries to a machine without a package registry: wheels, and its recipe's token data.

Run on the CPU machine by `scripts/gpu-bundle.sh`, from the repository root:

    .venv/bin/python bench/gpu_bundle.py wheels [--bundle DIR] [--python 3.12.3]   # lists, then the wheels
    .venv/bin/python bench/gpu_bundle.py data [--bundle DIR]     # the corpus, then its prepared data from the cache

`wheels` writes DIR/wheels.txt (name==version to carry) and DIR/requirements.txt (what gpu-check.sh installs),
then fills DIR/wheels/ for the target interpreter (the GPU machine's CPython 3.12 on manylinux x86_64 unless
--python says another; the tests name their own, which they can install): the wheel PyPI has for it, else
the package's sdist built into a wheel here. Which packages have no wheel is found out, not listed: it
changes with every release (DeepSpeed, rouge-score, sqlitedict, word2number today).

The built-in corpus (`python-stdlib`) is keyed in the data cache by the hashes of this interpreter's
standard library, which the GPU machine's Python (another version) does not share, so the check
trains on the same documents written out as one parquet file (`gpu.Bundle.corpus`): its cache key is then
the same on both machines, and the prepared entry copied into the bundle is found there as is.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from common import REPO
from gpu import RECIPE, Bundle

# Left to the GPU machine's own install (torch and its CUDA stack, transformers, accelerate, pyarrow)
# and the versions it is known to hold (docs of the lent machine: numpy 2.5.2, tokenizers 0.23.2,
# safetensors 0.8.0, huggingface_hub 1.33.0), and the project itself (built from the tree).
PROVIDED = re.compile(r"^(torch|transformers|accelerate|pyarrow|triton|nvidia-.*|cuda-.*|numpy|tokenizers|safetensors|"
                      r"huggingface-hub|orchestrator)$")
# Installed there too (its package list) with wheels over 1 MB: not carried. Smaller ones that are there
# are carried all the same: pip installs them only where the machine's version does not satisfy a pin.
PRESENT_LARGE = {"pandas", "grpcio", "pillow", "tensorboard", "hf-xet", "pygments", "scipy", "scikit-learn", "lxml", "aiohttp"}
LEFT_OUT = {"wandb": "20 MB, imported only with tracking.wandb.enabled",
            "mlflow-skinny": "8 MB with its needs, imported only by orch release's registry and tracking.mlflow",
            "sqlalchemy": "5 MB, for MLflow's registry and optuna's storage", "alembic": "for MLflow's registry and optuna's storage",
            "optuna": "imported only by orch sweep",
            "s3fs": "16 MB with botocore, aiobotocore and their needs, imported only with checkpoint.remote"}
"""Runtime dependencies not carried at all, with the reason: what the check does not run, left out to keep the
bundle under 60 MiB; gpu-check.sh installs the project without them."""
GPU_PYTHON = "3.12.3"
"""The lent GPU machine's Python (its documentation), the default target."""


@dataclass(frozen=True)
class Target:
    """The interpreter and platform the wheels are for: pip's download flags, the markers that decide which
    requirements apply there, and the wheel tags it installs."""

    python: str = GPU_PYTHON
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                  "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64")
    """linux_x86_64 last: a wheel built from an sdist here, which pip there installs too (same glibc or newer)."""

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    def pip_flags(self) -> list[str]:
        return ["--python-version", self.python, "--implementation", "cp", *(f"--platform={p}" for p in self.platforms)]

    def markers(self) -> dict[str, str]:
        return {"python_version": "{}.{}".format(*self.version), "python_full_version": self.python, "sys_platform": "linux",
                "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}

    def fits(self, wheel: Path) -> bool:
        """Whether pip there would install this wheel file."""
        from packaging.tags import compatible_tags, cpython_tags
        from packaging.utils import parse_wheel_filename

        interpreter = "cp{}{}".format(*self.version)
        supported = {*cpython_tags(self.version, platforms=self.platforms),
                     *compatible_tags(self.version, interpreter, platforms=self.platforms)}
        return not supported.isdisjoint(parse_wheel_filename(wheel.name)[3])

    def __str__(self) -> str:
        return f"CPython {self.python} on {self.platforms[0]}"


def project_requirements() -> list[str]:
    """The project's runtime requirements as pyproject.toml states them now (the installed metadata can lag)."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def closure(target: Target) -> dict[str, str]:
    """name -> version installed here, for every runtime requirement of the project on the target, with the
    requirements of the extras asked for (datasets needs fsspec[http], hence aiohttp), not descending into what
    the GPU machine provides or holds (it holds their requirements too), nor into what is left out."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def wanted(requirement: Requirement) -> list[tuple[str, str]]:
        return [(requirement.name, extra) for extra in ("", *requirement.extras)]

    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [pair for r in project_requirements() for pair in wanted(Requirement(r))]
    while todo:
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if (name, extra) in seen or PROVIDED.match(name) or name in PRESENT_LARGE or name in LEFT_OUT:
            continue
        seen.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"gpu bundle: {name} is required but not installed in this environment: run make setup") from None
        found[name] = dist.version
        for requirement in map(Requirement, dist.requires or []):
            # a requirement with no marker is the package's own (extra ""); one with a marker may name an extra
            if requirement.marker.evaluate({**target.markers(), "extra": extra}) if requirement.marker else not extra:
                todo += wanted(requirement)
    return found


def write_lists(bundle: Bundle, target: Target) -> dict[str, str]:
    """wheels.txt (the closure, pinned to the versions tested here) and requirements.txt (the project's
    requirements less what is left out, so pip keeps the machine's own versions where they satisfy them);
    wheels of other versions, or for another target, are removed, since two versions of one package stop a
    --no-deps install."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    pins = closure(target)
    (REPO / bundle.root).mkdir(parents=True, exist_ok=True)
    (REPO / bundle.wheel_list).write_text("".join(f"{name}=={pin}\n" for name, pin in sorted(pins.items())))
    own = [r for r in project_requirements() if canonicalize_name(Requirement(r).name) not in LEFT_OUT]
    (REPO / bundle.install_list).write_text("".join(f"{r}\n" for r in own))
    for wheel in (REPO / bundle.wheels).glob("*.whl"):
        name, pin, _, _ = parse_wheel_filename(wheel.name)
        if name != "orchestrator" and (pins.get(name) != str(pin) or not target.fits(wheel)):
            wheel.unlink()
    return pins


def fetch_wheels(bundle: Bundle, target: Target, pins: dict[str, str]) -> list[str]:
    """A wheel for the target of every pin that has none in the bundle yet: PyPI's where it has one (pip
    download prefers a wheel that fits the target's tags), else the sdist pip downloads instead, built into
    a wheel here. Returns the names built. A built wheel that does not fit the target (C extensions, built
    for this interpreter) stops the bundle with their names."""
    from packaging.utils import parse_wheel_filename

    wheels = REPO / bundle.wheels
    wheels.mkdir(parents=True, exist_ok=True)
    present = {parse_wheel_filename(w.name)[0] for w in wheels.glob("*.whl")}
    missing = [f"{name}=={pin}" for name, pin in sorted(pins.items()) if name not in present]
    if not missing:
        return []
    pip = [sys.executable, "-m", "pip"]
    # --no-deps lets pip take an sdist for a foreign target (wheels only would fail on the first sdist-only pin);
    # the closure already names every package.
    subprocess.run([*pip, "download", "-q", "--no-deps", *target.pip_flags(), "-d", str(wheels), *missing], check=True)
    sdists = [f for f in wheels.iterdir() if f.is_file() and not f.name.endswith(".whl")]
    downloaded = set(wheels.glob("*.whl"))
    if sdists:
        # DS_BUILD_OPS=0: DeepSpeed's sdist then builds a pure-Python wheel whose ops would compile on first use (the
        # recipes use torch's AdamW and need none); other packages ignore it.
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), *map(str, sdists)], check=True,
                       env={**os.environ, "DS_BUILD_OPS": "0"})
        for sdist in sdists:
            sdist.unlink()
    built = sorted(set(wheels.glob("*.whl")) - downloaded)
    unfit = [w for w in built if not target.fits(w)]
    if unfit:
        for wheel in unfit:
            wheel.unlink()
        names = ", ".join(parse_wheel_filename(w.name)[0] for w in unfit)
        raise SystemExit(f"gpu bundle: PyPI has no wheel for {target} of {names}, and their sdists have C extensions (built here: {', '.join(w.name for w in unfit)}); build them with "
                         f"Python {target.python} on manylinux x86_64 and put the wheels in {wheels}")
    return [parse_wheel_filename(w.name)[0] for w in built]


def write_corpus(target: Path) -> Path:
    """The built-in corpus's documents (this interpreter's standard library, as `orch` reads it) as
    parquet, one `text` row per file; kept if already there, since its hash is the data's cache key."""
    if target.exists():
        return target
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.data.corpus import source_files
    from orchestrator.data.spec import DataSpec

    files = source_files(DataSpec(builtin="python-stdlib"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.tmp")
    pq.write_table(pa.table({"text": texts}), temp, compression="zstd", compression_level=19)
    temp.replace(target)
    return target


def bundle_data(bundle: Bundle) -> Path:
    """The recipe's prepared data (tokenizer, train.bin, val.bin), prepared into `orch`'s data cache if
    it is not there yet, then copied into the bundle's cache under the same key."""
    from orchestrator.data.prepare import prepare_data
    from orchestrator.plan.load import load_and_plan

    write_corpus(REPO / bundle.corpus)
    _, plan, _ = load_and_plan(REPO / RECIPE, list(bundle.data_overrides), measure_cpu=False)
    prepared = prepare_data(plan.recipe.data, plan.recipe.train.seed, plan.data_cache_dir)
    target = REPO / bundle.cache / "data" / prepared.dir.name
    for stale in target.parent.glob("*"):
        if stale.name != target.name:
            shutil.rmtree(stale)  # an entry for an older recipe or corpus: never read again, and it counts towards the carry
    if not (target / "manifest.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(prepared.dir, target)
    print(f"data: {prepared.train_tokens:,} train + {prepared.val_tokens:,} val tokens, vocab {prepared.vocab_size}, "
          f"from {plan.data_cache_dir / prepared.dir.name} -> {target}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("wheels", "data"))
    parser.add_argument("--bundle", type=Path, default=Bundle().root, help="the bundle's directory (default: %(default)s)")
    parser.add_argument("--python", default=GPU_PYTHON, help="the target's Python version, X.Y or X.Y.Z (default: %(default)s)")
    args = parser.parse_args()
    bundle = Bundle(args.bundle)
    if args.what == "data":
        bundle_data(bundle)
        return
    target = Target(args.python)
    pins = write_lists(bundle, target)
    built = fetch_wheels(bundle, target, pins)
    print(f"wheels: {len(pins)} pinned in {bundle.wheel_list} for {target}"
          + (f"; built from sdists (PyPI has no wheel for it): {', '.join(built)}" if built else "")
          + "; left out: " + "; ".join(f"{n} ({why})" for n, why in LEFT_OUT.items()))


if __name__ == "__main__":
    main()
