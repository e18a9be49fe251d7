"""The `gates` section. Release gates are added by the gates work; until then the section is
closed and takes no keys."""

from orchestrator.spec import Spec


class GatesSpec(Spec):
    pass
