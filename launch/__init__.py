"""The node plane: everything that runs on a compute node.

`launch.node` starts a node's ranks; `launch.rank` is each rank's process (engine, training loop,
energy sampler, and on rank 0 the dashboards' mirror thread). It meets the control plane
(`orchestrator`) only through the run directory's typed records (`orchestrator.rundir`) and the
recipe's specs, and is started by argv, never imported by it.
"""
