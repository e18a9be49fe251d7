"""Training backends, plan side: one module per backend (config, process environment, checkpoint
consolidation and elastic conversion), found through `registry`; the node side of each is the module
of the same name in `launch.engines`. The recipe's `distributed` section lives here too (`spec`)."""
