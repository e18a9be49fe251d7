"""The data preparation job: `python -m orchestrator.slurm.prepare --run-dir DIR [RECIPE_SOURCE ...]`.

`orch submit` sends it when the recipe's data is not prepared yet, so preparation runs on a
compute node with `data.workers` cores, never on the login node; the training job waits for it
(`--dependency=afterok`) and is cancelled by Slurm if it fails. It writes the run's `data.json` and
`provenance.json`, as `orch run` does before its first process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.errors import OrchestratorError
from orchestrator.starting.execute import record_data
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import read_plan, read_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("recipe_sources", type=Path, nargs="*", help="the recipe's files, for the provenance record")
    args = parser.parse_args()
    run = RunDir(args.run_dir)
    plan = read_plan(run)
    try:
        record_data(run, read_recipe(run), plan.data_cache_dir, plan.recipe_hash, args.recipe_sources)
    except OrchestratorError as exc:
        raise SystemExit("\n".join(f"error: {line}" for line in exc.lines())) from None
    print(f"prepared the data of {run.path} in {plan.data_cache_dir}", flush=True)


if __name__ == "__main__":
    main()
