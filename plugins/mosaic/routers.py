"""MoSAIC's two routers (ROUTER_REGISTRY): the paper's oracle, reading ground-truth attributes, and a predicted one
(beyond the paper, whose stated limitation is that test attributes are rarely known) that reads an attribute head's
predictions. Both return hard 0/1 weights over the schema's experts, restricted to the included study attributes
(the inclusion configuration), so ``weights > 0`` is the active set.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets.attribute_base import SINGLE_STATE
from ..registry import ROUTER_REGISTRY
from ..routers import Router, RouterOutput
from .schema import ExpertSchema

__all__ = ["AttributeRouter", "OracleAttributeRouter", "PredictedAttributeRouter"]


class AttributeRouter(Router):
    """Holds the schema and the included experts (E,) bool buffer (``set_included``)."""

    def __init__(self, *, schema: ExpertSchema, include: Optional[Iterable[str]] = None):
        super().__init__(num_experts=schema.num_experts)
        self.schema = schema
        self.register_buffer("included", schema.expert_mask(include), persistent=False)

    def set_included(self, names: Optional[Iterable[str]]) -> None:
        """Switch study attributes on (``names``; None: all, empty: none) and every other one off."""
        self.included = self.schema.expert_mask(names).to(self.included.device)

    def included_names(self) -> tuple:
        return tuple(a.name for a in self.schema.attributes if bool(self.included[a.expert_slice].any()))


@ROUTER_REGISTRY.register()
class OracleAttributeRouter(AttributeRouter):
    """attributes (B, A) int64 (-1 missing) -> weights (B, E) in {0, 1}: the schema's oracle rule (an absent
    single-state attribute activates nothing; a dual-state or multiclass one exactly its observed expert)."""

    def route(self, inputs: torch.Tensor, **context) -> RouterOutput:
        active = self.schema.active(inputs.to(self.included.device)) & self.included
        return RouterOutput(active.float())


@ROUTER_REGISTRY.register()
class PredictedAttributeRouter(AttributeRouter):
    """features (B, D) -> weights (B, E) in {0, 1} from a linear attribute head (one logit per expert).

    Decoding per study attribute: a single-state one is on when its probability is > 0.5; every other one takes its
    arg-max expert (a person has some gender, sleeve length, age, colour), and a colour group that allows several
    colours also every other colour with probability > 0.5. Training
    (``context["attributes"]`` given): ``aux_loss`` = BCE of every expert's logit against the oracle's active set,
    over the samples where that study attribute is annotated.
    """

    def __init__(self, *, schema: ExpertSchema, in_dim: int, include: Optional[Iterable[str]] = None):
        super().__init__(schema=schema, include=include)
        self.head = nn.Linear(int(in_dim), schema.num_experts)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        groups = torch.zeros(schema.num_experts, dtype=torch.long)
        for k, a in enumerate(schema.attributes):
            groups[a.expert_slice] = k
        self.register_buffer("expert_group", groups, persistent=False)  # (E,) study attribute of each expert

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, E) -> active (B, E) bool, per study attribute as the class docstring says."""
        active = logits > 0
        for a in self.schema.attributes:
            if a.kind == SINGLE_STATE:
                continue
            part = logits[:, a.expert_slice]
            top = F.one_hot(part.argmax(1), a.num_experts).bool()
            active[:, a.expert_slice] = top if a.exclusive else top | (part > 0)
        return active

    def route(self, inputs: torch.Tensor, **context) -> RouterOutput:
        logits = self.head(inputs)
        weights = (self.decode(logits.detach()) & self.included).float()
        attributes = context.get("attributes")
        if attributes is None:
            return RouterOutput(weights)
        target = self.schema.active(attributes.to(logits.device)).float()
        known = self.schema.known(attributes.to(logits.device))[:, self.expert_group].float()  # (B, E)
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=known, reduction="sum")
        return RouterOutput(weights, loss / known.sum().clamp(min=1.0))
