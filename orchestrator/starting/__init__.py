"""Starting a run from the control plane: its directory written (plan, data, provenance), the
attempt lock `orch run` holds, and the node launchers started on this machine."""
