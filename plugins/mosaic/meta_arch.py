"""``MoSAIC`` (META_ARCH_REGISTRY): CLIP-ReID + attribute experts in the last K blocks, routed per sample.

The base is a CLIP-ReID model (stage-2 weights, stage-1 prompts); everything of it stays frozen and only the
experts (+ the optional attribute head) train, with CLIP-ReID's stage-2 losses. With no active expert (all study
attributes switched off, or none present) the model is exactly the CLIP-ReID model (paper Table 3, last row).

Routing: ``batch["attributes"]`` (B, A) through the oracle router at training; at test the oracle
(``router="oracle"``) or the attribute head's predictions on the frozen tower's CLS (``router="predicted"``).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Optional

import torch
from fastreid.config import configurable
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

from ..data.batch import ATTRIBUTES
from ..modeling.backbones.clip import CLIPImageFeatures
from ..modeling.meta_arch.clipreid import CLIPReID
from .build import schema_from_cfg
from .experts import install_experts
from .routers import OracleAttributeRouter, PredictedAttributeRouter
from .schema import ExpertSchema

__all__ = ["MoSAIC", "ROUTER_MODES"]

ROUTER_MODES = ("oracle", "predicted")


@META_ARCH_REGISTRY.register()
class MoSAIC(CLIPReID):
    """Batch dict (fast-reid's keys + ``attributes``) -> loss dict (training) or features (eval)."""

    @configurable
    def __init__(self, *, schema: ExpertSchema, last_k: int = 12, rank: int = 16, alpha: float = 16.0,
                 token_pool: str = "mean", expert_pool: str = "mean", add_to: str = "all",
                 include: Optional[Iterable[str]] = None, router: str = "oracle", attribute_head: bool = True,
                 attribute_weight: float = 1.0, train_heads: bool = False, **clipreid_kwargs):
        """
        Args:
            schema: study attributes and experts (``plugins.mosaic.schema``).
            last_k / rank / alpha / token_pool / expert_pool / add_to: the expert module (``experts.py``).
            include: study attributes switched on (None: all; empty: none).
            router: test-time routing, "oracle" or "predicted".
            attribute_head: train the predicted router's head (needed for ``router="predicted"``).
            attribute_weight: weight of its BCE loss (``loss_attr``).
            train_heads: also train CLIP-ReID's BNNecks and classifiers.
            clipreid_kwargs: ``CLIPReID``'s arguments (towers, classes, losses).
        """
        super().__init__(**clipreid_kwargs)
        if router not in ROUTER_MODES:
            raise ValueError(f"MOSAIC.ROUTER must be one of {ROUTER_MODES}, got {router!r}")
        if router == "predicted" and not attribute_head:
            raise ValueError("MOSAIC.ROUTER 'predicted' needs MOSAIC.ATTRIBUTE_HEAD True")
        self.schema = schema
        # plain tuple (not a ModuleList): the banks are registered once, inside the tower's blocks
        self.banks = tuple(install_experts(self.image_encoder, num_experts=schema.num_experts, last_k=last_k,
                                           rank=rank, alpha=alpha, token_pool=token_pool, expert_pool=expert_pool,
                                           add_to=add_to))
        self.oracle = OracleAttributeRouter(schema=schema, include=include)
        self.predictor = (PredictedAttributeRouter(schema=schema, in_dim=self.image_encoder.width, include=include)
                          if attribute_head else None)
        self.router_mode = router
        self.attribute_weight = float(attribute_weight)
        self.train_heads = bool(train_heads)
        self.train_experts_only()

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MOSAIC
        return dict(CLIPReID.from_config(cfg), schema=schema_from_cfg(cfg), last_k=int(m.LAST_K), rank=int(m.RANK),
                    alpha=float(m.ALPHA), token_pool=m.TOKEN_POOL, expert_pool=m.EXPERT_POOL, add_to=m.ADD_TO,
                    include=list(m.INCLUDE) or None, router=m.ROUTER, attribute_head=bool(m.ATTRIBUTE_HEAD),
                    attribute_weight=float(m.ATTRIBUTE_WEIGHT), train_heads=bool(m.TRAIN_HEADS))

    # --- what trains ------------------------------------------------------------------------------------------

    def train_experts_only(self) -> "MoSAIC":
        """Only the experts (+ attribute head; + BNNeck weights and classifiers with ``train_heads``) train."""
        self.requires_grad_(False)
        for bank in self.banks:
            bank.requires_grad_(True)
        if self.predictor is not None:
            self.predictor.requires_grad_(True)
        if self.train_heads and self.num_classes > 0:
            for module in (self.classifier, self.classifier_proj):
                module.requires_grad_(True)
            self.bottleneck.weight.requires_grad_(True)
            self.bottleneck_proj.weight.requires_grad_(True)
        return self

    def train_image_encoder(self) -> "MoSAIC":
        """CLIP-ReID's stage-2 trainer calls this; for MoSAIC the tower stays frozen (only experts train)."""
        return self.train_experts_only()

    # --- routing ----------------------------------------------------------------------------------------------

    def set_included(self, names: Optional[Iterable[str]]) -> None:
        """The inclusion configuration: study attributes switched on (None: all; empty: none)."""
        self.oracle.set_included(names)
        if self.predictor is not None:
            self.predictor.set_included(names)

    @contextlib.contextmanager
    def routing(self, active: torch.Tensor):
        """Run the tower with experts ``active`` (B, E) bool (all False: the base model)."""
        for bank in self.banks:
            bank.active = active
        try:
            yield
        finally:
            for bank in self.banks:
                bank.active = None

    def base_features(self, batched_inputs: Dict) -> CLIPImageFeatures:
        """The frozen CLIP-ReID tower's outputs (no expert active)."""
        images = batched_inputs["images"]
        with self.routing(torch.zeros(images.shape[0], self.schema.num_experts, dtype=torch.bool,
                                      device=self.device)):
            return super().encode(batched_inputs)

    def attributes_of(self, batched_inputs: Dict) -> torch.Tensor:
        if ATTRIBUTES not in batched_inputs:
            raise KeyError(f"MoSAIC's oracle router reads batch['{ATTRIBUTES}'] (set PLUGINS.DATA.ATTRIBUTES True and "
                           f"use an attribute dataset); the batch has {sorted(batched_inputs)}")
        return batched_inputs[ATTRIBUTES].to(self.device)

    def oracle_active(self, batched_inputs: Dict) -> torch.Tensor:
        return self.oracle(self.attributes_of(batched_inputs)).weights > 0

    @torch.no_grad()
    def predicted_active(self, batched_inputs: Dict) -> torch.Tensor:
        """(B, E) bool from the attribute head on the frozen tower's CLS."""
        if self.predictor is None:
            raise RuntimeError("this MoSAIC model has no attribute head (MOSAIC.ATTRIBUTE_HEAD False)")
        return self.predictor(self.base_features(batched_inputs).cls).weights > 0

    def encode(self, batched_inputs: Dict) -> CLIPImageFeatures:
        if self.training or self.router_mode == "oracle":
            active = self.oracle_active(batched_inputs)
        else:
            active = self.predicted_active(batched_inputs)
        with self.routing(active):
            return super().encode(batched_inputs)

    # --- training ---------------------------------------------------------------------------------------------

    def losses(self, batched_inputs: Dict) -> Dict[str, torch.Tensor]:
        losses = super().losses(batched_inputs)
        if self.predictor is not None and self.attribute_weight > 0:
            with torch.no_grad():
                cls = self.base_features(batched_inputs).cls
            aux = self.predictor(cls, attributes=self.attributes_of(batched_inputs)).aux_loss
            losses["loss_attr"] = self.attribute_weight * aux
        return losses
