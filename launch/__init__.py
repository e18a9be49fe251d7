"""The node plane: everything that runs on a compute node.

`launch.node` starts a node's ranks; `launch.rank` is each rank's process (engine, training loop,
energy sampler, and on rank 0 the dashboards' mirror thread). It is started by argv and never
imported by the control plane. Of `orchestrator` it uses the contract (`orchestrator.rundir`: the run
directory's records and logs), the recipe's specs, the hook markers, and `orchestrator.shared`: the
code both planes run (building the model, reading prepared data, checkpoint storage, the energy
bill, the dashboards); never planning, preparation, Slurm submission, the gates or the release. `tests/unit/test_architecture.py` lists
what it may reach, each with its reason, and fails on anything else.
"""
