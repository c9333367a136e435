"""``CLIPReID`` (META_ARCH_REGISTRY): CLIP-ReID's model (Li et al., AAAI 2023) on the project's open_clip towers.

Image tower (+ SIE on CLS) -> CLS of block L-1 (x11), CLS after ``ln_post`` (x12, D) and its projection (E);
BNNecks ``bottleneck`` (D) and ``bottleneck_proj`` (E) with frozen biases; bias-free classifiers on both; a frozen
text tower and the identity prompt learner. Parameter names follow the official checkpoint where they can
(``prompt_learner.cls_ctx``, ``bottleneck``, ``classifier_proj``, ...); the towers are ``image_encoder.visual.*`` and
``text_encoder.*`` (tools/convert_weights.py maps the official names).

Training (stage 2): losses ``loss_id`` = w_id * [CE_ls(classifier(BN(x12))) + CE_ls(classifier_proj(BN(proj)))],
``loss_triplet`` = w_tri * sum of batch-hard triplet on (x11, x12, proj), ``loss_i2t`` = w_i2t * CE_ls(proj @ T^T)
with T the frozen text features of every identity (``set_text_features``). Eval: ``images`` -> test feature
(``neck_feat`` "before": cat[x12, proj]; "after": cat[BN(x12), BN(proj)]), ``text_tokens`` -> text features.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.losses import triplet_loss
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY
from torch import nn

from ..heads.bnneck import bias_free_classifier, bnneck
from ..backbones.clip import (CLIPImageEncoder, CLIPImageFeatures, CLIPTextEncoder, IdentityPromptLearner,
                              clip_from_cfg, image_encoder_from_cfg)

__all__ = ["CLIPReID"]

NECK_FEATS = ("before", "after")


@META_ARCH_REGISTRY.register()
class CLIPReID(nn.Module):
    """Batch dict (fast-reid's keys; ``images`` 0-255) -> loss dict (training) or features (eval)."""

    @configurable
    def __init__(self, *, image_encoder: CLIPImageEncoder, text_encoder: CLIPTextEncoder, num_classes: int,
                 pixel_mean, pixel_std, prompt: str = "A photo of a X X X X person.", prompt_init_std: float = 0.02,
                 neck_feat: str = "before", id_weight: float = 0.25, triplet_weight: float = 1.0,
                 i2t_weight: float = 1.0, label_smooth: float = 0.1, triplet_margin: float = 0.3):
        """
        Args:
            image_encoder / text_encoder: the CLIP towers (the text tower is frozen here).
            num_classes: identities of the training set (0: an evaluation-only model without classifiers/prompts).
            pixel_mean / pixel_std: per-channel normalisation of 0-255 images (127.5 = CLIP-ReID's 0.5 / 0.5).
            prompt: identity prompt template with placeholder words ``X``.
            prompt_init_std: std of the learned prompt tokens' initialisation.
            neck_feat: test feature before or after the BNNecks.
            id_weight / triplet_weight / i2t_weight: stage-2 loss weights (i2t 0: no text features needed).
            label_smooth: epsilon of the label-smoothed cross-entropies.
            triplet_margin: batch-hard triplet margin.
        """
        super().__init__()
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"CLIPREID.NECK_FEAT must be one of {NECK_FEATS}, got {neck_feat!r}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder.requires_grad_(False)
        width, embed = image_encoder.width, image_encoder.embed_dim
        self.bottleneck = bnneck(width)
        self.bottleneck_proj = bnneck(embed)
        self.num_classes = int(num_classes)
        if self.num_classes > 0:
            self.classifier = bias_free_classifier(width, self.num_classes)
            self.classifier_proj = bias_free_classifier(embed, self.num_classes)
            self.prompt_learner = IdentityPromptLearner(num_ids=self.num_classes, text_encoder=text_encoder,
                                                        template=prompt, init_std=prompt_init_std)
            self.prompt_learner.requires_grad_(False)  # stage 2 default; stage 1 calls train_prompts_only()
        else:
            self.classifier = self.classifier_proj = self.prompt_learner = None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("text_features", torch.zeros(0, embed), False)  # (num_classes, E) for the i2t loss
        self.neck_feat = neck_feat
        self.id_weight, self.triplet_weight, self.i2t_weight = float(id_weight), float(triplet_weight), float(i2t_weight)
        self.label_smooth, self.triplet_margin = float(label_smooth), float(triplet_margin)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.CLIPREID
        clip = clip_from_cfg(cfg, load_weights=bool(cfg.MODEL.BACKBONE.PRETRAIN))
        return {"image_encoder": image_encoder_from_cfg(cfg, clip), "text_encoder": CLIPTextEncoder(clip),
                "num_classes": int(cfg.MODEL.HEADS.NUM_CLASSES), "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
                "pixel_std": list(cfg.MODEL.PIXEL_STD), "prompt": c.PROMPT, "prompt_init_std": c.PROMPT_INIT_STD,
                "neck_feat": c.NECK_FEAT, "id_weight": c.ID_WEIGHT, "triplet_weight": c.TRIPLET_WEIGHT,
                "i2t_weight": c.I2T_WEIGHT, "label_smooth": c.LABEL_SMOOTH, "triplet_margin": c.TRIPLET_MARGIN}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # --- stages ----------------------------------------------------------------------------------------------

    def train_prompts_only(self) -> "CLIPReID":
        """Stage 1: only ``prompt_learner.cls_ctx`` trains."""
        self.requires_grad_(False)
        self.prompt_learner.cls_ctx.requires_grad_(True)
        return self

    def train_image_encoder(self) -> "CLIPReID":
        """Stage 2: image tower (+ SIE), classifiers and BN weights train; BN biases, text tower, prompts frozen."""
        self.requires_grad_(True)
        for frozen in (self.text_encoder, self.prompt_learner):
            if frozen is not None:
                frozen.requires_grad_(False)
        self.bottleneck.bias.requires_grad_(False)
        self.bottleneck_proj.bias.requires_grad_(False)
        return self

    def set_text_features(self, features: torch.Tensor) -> None:
        """The frozen text feature of every identity (num_classes, E) for the i2t loss."""
        if features.shape != (self.num_classes, self.image_encoder.embed_dim):
            raise ValueError(f"text features {tuple(features.shape)} do not fit {self.num_classes} identities x "
                             f"{self.image_encoder.embed_dim}")
        self.text_features = features.detach().to(self.device, torch.float32)

    # --- features --------------------------------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """0-255 images -> normalised (never in place: fast-reid's loaders may hand the same batch twice)."""
        return (images.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def _camids(self, batched_inputs) -> Optional[torch.Tensor]:
        if not self.image_encoder.uses_camids:
            return None
        camids = batched_inputs.get("camids")
        if camids is not None and not torch.is_tensor(camids):
            raise TypeError(f"the SIE embedding needs integer camera ids, got {type(camids).__name__} "
                            f"(e.g. {list(camids)[:2]})")
        return camids

    def prompt_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Stage-1 image features: projected CLS of 0-255 images without SIE (B, E)."""
        return self.image_encoder(self.normalize(images), use_sie=False).proj

    def prompt_text_features(self, labels: torch.Tensor) -> torch.Tensor:
        """Text features of the identity prompts of ``labels`` (B,) -> (B, E), not normalised."""
        return self.text_encoder.forward_embeddings(*self.prompt_learner(labels.to(self.device)))

    def encode(self, batched_inputs: Dict) -> CLIPImageFeatures:
        """The image tower on a batch's 0-255 ``images`` (+ its ``camids`` for SIE). Subclasses that condition the
        tower on other batch keys (MoSAIC's attributes) override this one method; losses and eval both call it."""
        return self.image_encoder(self.normalize(batched_inputs["images"]), self._camids(batched_inputs))

    def test_feature(self, out: CLIPImageFeatures) -> torch.Tensor:
        """Image-tower outputs -> test feature (B, D + E), not normalised (the evaluator normalises)."""
        if self.neck_feat == "after":
            return torch.cat([self.bottleneck(out.cls), self.bottleneck_proj(out.proj)], dim=1)
        return torch.cat([out.cls, out.proj], dim=1)

    def image_test_features(self, images: torch.Tensor, camids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """0-255 images (B, 3, H, W) -> test feature (B, D + E), not normalised (the evaluator normalises)."""
        return self.test_feature(self.image_encoder(self.normalize(images), camids))

    # --- fast-reid interface ---------------------------------------------------------------------------------

    def forward(self, batched_inputs: Dict):
        if not self.training:
            if "images" in batched_inputs:
                return self.test_feature(self.encode(batched_inputs))
            if "text_tokens" in batched_inputs:
                return self.text_encoder(batched_inputs["text_tokens"].to(self.device))
            raise KeyError(f"an eval batch needs 'images' or 'text_tokens', got {sorted(batched_inputs)}")
        return self.losses(batched_inputs)

    def losses(self, batched_inputs: Dict) -> Dict[str, torch.Tensor]:
        if self.num_classes <= 0:
            raise RuntimeError("this CLIPReID model has no classifiers (MODEL.HEADS.NUM_CLASSES 0): eval only")
        if "targets" not in batched_inputs:
            raise KeyError("Person ID annotation ('targets') missing in training batch")
        targets = batched_inputs["targets"].to(self.device)
        out = self.encode(batched_inputs)
        eps = self.label_smooth
        logits = self.classifier(self.bottleneck(out.cls))
        logits_proj = self.classifier_proj(self.bottleneck_proj(out.proj))
        losses = {"loss_id": self.id_weight * (F.cross_entropy(logits, targets, label_smoothing=eps)
                                               + F.cross_entropy(logits_proj, targets, label_smoothing=eps))}
        if self.triplet_weight > 0:
            losses["loss_triplet"] = self.triplet_weight * sum(
                triplet_loss(f, targets, self.triplet_margin, False, True)
                for f in (out.cls_penultimate, out.cls, out.proj))
        if self.i2t_weight > 0:
            if self.text_features.shape[0] != self.num_classes:
                raise RuntimeError("the i2t loss needs the text features of every identity: call "
                                   "set_text_features() (the CLIP-ReID trainer does) or set CLIPREID.I2T_WEIGHT 0")
            i2t = out.proj @ self.text_features.t()
            losses["loss_i2t"] = self.i2t_weight * F.cross_entropy(i2t, targets, label_smoothing=eps)
        return losses
