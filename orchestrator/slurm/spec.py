"""The `slurm` section. Scheduler settings are added by the Slurm work; until then the section is
closed and takes no keys."""

from orchestrator.spec import Spec


class SlurmSpec(Spec):
    pass
