"""The run directory: the typed contract between the control plane (`orchestrator`) and the node
plane (`launch`). `layout` names every file, `records` reads and writes what crosses the boundary,
`events` is the one reader and writer of the append-only logs. Nothing here imports the planner."""
