"""Per-rank entry point: `python -m orchestrator.runtime --run-dir DIR`.

Started by the backend's launcher (torchrun for DeepSpeed); reads everything it needs from the
run directory, and its rank from the launcher's standard variables (RANK, LOCAL_RANK, WORLD_SIZE).
"""

import argparse
from pathlib import Path

from orchestrator.runtime.rank import run_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    run_rank(parser.parse_args().run_dir)


if __name__ == "__main__":
    main()
