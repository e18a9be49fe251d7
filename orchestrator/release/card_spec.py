"""The `card` section: what the people releasing a model declare about it, for its model card.

Everything else on the card (architecture, compute, energy, data, evaluation) is computed from the
run's own records; only what no record can know is written here: who provides the model, under
which licence, what it is for and not for, and its limitations beyond those the gates state. The
card's technical documentation follows the EU AI Act's Annex XI, Section 1; an empty field is
printed as "not stated", never guessed.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from orchestrator.spec import Spec

Statement = Annotated[str, Field(min_length=1)]


class CardSpec(Spec):
    provider: Optional[Statement] = Field(None, description="who places the model on the market (a person or organisation)")
    licence: Optional[Statement] = Field(None, description="an SPDX identifier (Apache-2.0, MIT) or the licence's name")
    acceptable_use_policy: Optional[Statement] = Field(None, description="where the acceptable-use policy is published (URL or document)")
    intended_uses: list[Statement] = Field(default_factory=list, description="tasks the model is meant for, and the systems it may be built into")
    excluded_uses: list[Statement] = Field(default_factory=list, description="uses the provider rules out")
    limitations: list[Statement] = Field(default_factory=list, description="known limitations, besides the fixed ones every card states")
