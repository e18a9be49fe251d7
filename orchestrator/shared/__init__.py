"""Code both planes run: the only part of `orchestrator` the node plane imports besides the contract
(`orchestrator.rundir`), the recipe's specs, the exit codes and the hook markers. Building the
model, reading prepared data, checkpoint storage, the energy bill, the dashboards, the LR schedule,
the safe file tree, the machine's figures, offline mode (`tests/unit/test_architecture.py`)."""
