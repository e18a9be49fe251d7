"""The `energy` section. Measurement and carbon settings are added by the energy-accounting work;
until then the section is closed and takes no keys."""

from orchestrator.spec import Spec


class EnergySpec(Spec):
    pass
