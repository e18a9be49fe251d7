"""What the GPU check carries to a machine without a package registry: the token data of its recipe and
the list of wheels to download. Run on the CPU machine by `scripts/gpu-bundle.sh`, from the repository root:

    .venv/bin/python bench/gpu_bundle.py lists    # gpu-bundle/wheels.txt (name==version to carry), requirements.txt
    .venv/bin/python bench/gpu_bundle.py data     # the corpus, then its prepared data from the cache, into gpu-bundle/

The built-in corpus (`python-stdlib`) is keyed in the data cache by the hashes of this interpreter's
standard library, which the GPU machine's Python (another version) does not share, so the check
trains on the same documents written out as one parquet file (`gpu.CORPUS`): its cache key is then
the same on both machines, and the prepared entry copied into the bundle is found there as is.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import tomllib
from pathlib import Path

from common import REPO
from gpu import BUNDLE, BUNDLE_CACHE, CORPUS, DATA_OVERRIDES, RECIPE

WHEELS = BUNDLE / "wheels"
WHEEL_LIST = BUNDLE / "wheels.txt"
INSTALL_LIST = BUNDLE / "requirements.txt"
"""What gpu-check.sh installs from the carried wheels: the project's own requirements less LEFT_OUT."""

# Left to the GPU machine's own install (torch and its CUDA stack, transformers, accelerate, pyarrow)
# and the versions it is known to hold (docs of the lent machine: numpy 2.5.2, tokenizers 0.23.2,
# safetensors 0.8.0, huggingface_hub 1.33.0), and the project itself (built from the tree).
PROVIDED = re.compile(r"^(torch|transformers|accelerate|pyarrow|triton|nvidia-.*|cuda-.*|numpy|tokenizers|safetensors|"
                      r"huggingface-hub|orchestrator)$")
# Installed there too (its package list) with wheels over 1 MB: not carried. Smaller ones that are there
# are carried all the same: pip installs them only where the machine's version does not satisfy a pin.
PRESENT_LARGE = {"pandas", "grpcio", "pillow", "tensorboard", "hf-xet", "pygments"}
LEFT_OUT = {"wandb": "20 MB, imported only with tracking.wandb.enabled"}
"""Runtime dependencies not carried at all, with the reason; gpu-check.sh installs the project without them."""
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "os_name": "posix", "extra": ""}


def project_requirements() -> list[str]:
    """The project's runtime requirements as pyproject.toml states them now (the installed metadata can lag)."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def closure() -> dict[str, str]:
    """name -> version installed here, for every runtime requirement of the project on Python 3.12, not
    descending into what the GPU machine provides or holds (it holds their requirements too), nor into
    what is left out."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    todo = [Requirement(r).name for r in project_requirements()]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found or PROVIDED.match(name) or name in PRESENT_LARGE or name in LEFT_OUT:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"gpu bundle: {name} is required but not installed in this environment: run make setup") from None
        found[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(MARKERS):
                todo.append(requirement.name)
    return found


def write_lists() -> dict[str, str]:
    """wheels.txt (the closure, pinned to the versions tested here) and requirements.txt (the project's
    requirements less what is left out, so pip keeps the machine's own versions where they satisfy them);
    wheels of other versions are removed, since two versions of one package stop a --no-deps install."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    pins = closure()
    (REPO / WHEEL_LIST).write_text("".join(f"{name}=={pin}\n" for name, pin in sorted(pins.items())))
    own = [r for r in project_requirements() if canonicalize_name(Requirement(r).name) not in LEFT_OUT]
    (REPO / INSTALL_LIST).write_text("".join(f"{r}\n" for r in own))
    for wheel in (REPO / WHEELS).glob("*.whl"):
        name, pin, _, _ = parse_wheel_filename(wheel.name)
        if name != "orchestrator" and pins.get(name) != str(pin):
            wheel.unlink()
    return pins


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


def bundle_data() -> Path:
    """The recipe's prepared data (tokenizer, train.bin, val.bin), prepared into `orch`'s data cache if
    it is not there yet, then copied into the bundle's cache under the same key."""
    from orchestrator.data.prepare import prepare_data
    from orchestrator.plan.load import load_and_plan

    write_corpus(REPO / CORPUS)
    _, plan, _ = load_and_plan(REPO / RECIPE, list(DATA_OVERRIDES), measure_cpu=False)
    prepared, _ = prepare_data(plan.recipe.data, plan.recipe.train.seed, plan.data_cache_dir)
    target = REPO / BUNDLE_CACHE / "data" / prepared.dir.name
    for stale in target.parent.glob("*"):
        if stale.name != target.name:
            shutil.rmtree(stale)  # an entry for an older recipe or corpus: never read again, and it counts towards the carry
    if not (target / "manifest.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(prepared.dir, target)
    print(f"data: {prepared.train_tokens:,} train + {prepared.val_tokens:,} val tokens, vocab {prepared.vocab_size}, "
          f"from {plan.data_cache_dir / prepared.dir.name} -> {target.relative_to(REPO)}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("lists", "data"))
    if parser.parse_args().what == "data":
        bundle_data()
        return
    pins = write_lists()
    print(f"wheels: {len(pins)} pinned in {WHEEL_LIST}; left out: " + "; ".join(f"{n} ({why})" for n, why in LEFT_OUT.items()))


if __name__ == "__main__":
    main()
