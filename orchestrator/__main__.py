"""`python -m orchestrator` is the same as the `orch` command."""

from orchestrator.cli import main

main()
