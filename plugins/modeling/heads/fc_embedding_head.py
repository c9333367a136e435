"""``FCEmbeddingHead``: torchreid's embedding head (pool -> Linear -> BN1d -> ReLU -> classifier) for fast-reid.

torchreid's ReID models (OSNet, ...) end in ``fc = Sequential(Linear(C, D), BatchNorm1d(D), ReLU)`` and, in eval
mode, return that D-dim output as the retrieval feature. fast-reid's ``EmbeddingHead`` has a bias-free 1x1 conv and
no ReLU, so it cannot reproduce that feature; this head can, which lets torchreid checkpoints (see
tools/convert_weights.py --from torchreid-osnet) be evaluated and fine-tuned inside fast-reid's ``Baseline``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.config import configurable
from fastreid.layers import any_softmax, pooling
from fastreid.modeling.heads import REID_HEADS_REGISTRY


@REID_HEADS_REGISTRY.register()
class FCEmbeddingHead(nn.Module):
    """Pool (N, C, H, W) -> fc (N, D) = ReLU(BN1d(Linear(pool))) -> margin-softmax logits over ``num_classes``.

    Eval returns the fc output (N, D), as torchreid does. Training returns fast-reid's head dict:
    ``cls_outputs`` / ``pred_class_logits`` (N, num_classes) and ``features`` (the pooled (N, C) feature when
    ``neck_feat == "before"``, the fc output (N, D) when ``"after"``; torchreid's triplet loss uses the fc output).
    """

    @configurable
    def __init__(self, *, feat_dim: int, embedding_dim: int, num_classes: int, neck_feat: str, pool_type: str,
                 cls_type: str, scale: float, margin: float):
        super().__init__()
        if embedding_dim <= 0:
            raise ValueError(f"FCEmbeddingHead needs MODEL.HEADS.EMBEDDING_DIM > 0 (the fc width), got {embedding_dim}")
        if neck_feat not in ("before", "after"):
            raise ValueError(f"MODEL.HEADS.NECK_FEAT must be 'before' or 'after', got {neck_feat!r}")
        if not hasattr(pooling, pool_type):
            raise ValueError(f"MODEL.HEADS.POOL_LAYER {pool_type!r} is not one of {pooling.__all__}")
        if not hasattr(any_softmax, cls_type):
            raise ValueError(f"MODEL.HEADS.CLS_LAYER {cls_type!r} is not one of {any_softmax.__all__}")
        self.pool_layer = getattr(pooling, pool_type)()
        self.neck_feat = neck_feat
        # Same layout (and state-dict names fc.0 / fc.1) as torchreid's _construct_fc_layer.
        self.fc = nn.Sequential(nn.Linear(feat_dim, embedding_dim), nn.BatchNorm1d(embedding_dim),
                                nn.ReLU(inplace=True))
        # Class weights without bias: fast-reid's margin softmaxes (Linear/Cos/Arc/Circle) all use F.linear(x, W).
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        self.cls_layer = getattr(any_softmax, cls_type)(num_classes, scale, margin)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchreid's OSNet._init_params for the fc block; fast-reid's EmbeddingHead init for the classifier.
        nn.init.normal_(self.fc[0].weight, 0, 0.01)
        nn.init.zeros_(self.fc[0].bias)
        nn.init.ones_(self.fc[1].weight)
        nn.init.zeros_(self.fc[1].bias)
        nn.init.normal_(self.weight, std=0.01)

    @classmethod
    def from_config(cls, cfg) -> dict:
        h = cfg.MODEL.HEADS
        return {"feat_dim": cfg.MODEL.BACKBONE.FEAT_DIM, "embedding_dim": h.EMBEDDING_DIM,
                "num_classes": h.NUM_CLASSES, "neck_feat": h.NECK_FEAT, "pool_type": h.POOL_LAYER,
                "cls_type": h.CLS_LAYER, "scale": h.SCALE, "margin": h.MARGIN}

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None):
        """features: (N, C, H, W) backbone maps; targets: (N,) class ids (training only)."""
        pool_feat = self.pool_layer(features).flatten(1)  # (N, C)
        emb = self.fc(pool_feat)                          # (N, D)
        if not self.training:
            return emb
        if self.cls_layer.__class__.__name__ == "Linear":
            logits = F.linear(emb, self.weight)
        else:
            logits = F.linear(F.normalize(emb), F.normalize(self.weight))
        # clone: fast-reid's margin layers modify logits in place
        cls_outputs = self.cls_layer(logits.clone(), targets)
        return {"cls_outputs": cls_outputs, "pred_class_logits": logits.mul(self.cls_layer.s),
                "features": pool_feat if self.neck_feat == "before" else emb}
