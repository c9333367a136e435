"""MoE-KD's two meta-architectures (META_ARCH_REGISTRY).

``MoEKDTeacher``: ``MoETeacher`` (frozen experts + adaptation + gate, or a ladder fusion) -> teacher feature
F_t (B, D) -> BNNeck -> classifier z_t. Training: ``loss_cls`` = CE(z_t), ``loss_triplet`` = beta * batch-hard
triplet(F_t, margin alpha) (Eq. 14-15). Eval: F_t (the evaluator normalises).

``MoEKDStudent``: fast-reid ResNet-18 -> stage-4 map (B, 512, h, w) -> GAP -> projection FC(512 -> 2048) + BN +
ReLU = F_s -> BNNeck -> classifier z_s (the teacher's head). Training: L_task + l1 KD(z_s, z_t) + l2 MSE(N_s, N_t)
+ l3 AT(map_s, A_t) + l4 Gram(F_s, F_t) (Eq. 13), N the classifier input (BNNeck output) of each model: the
"penultimate layer" of Eq. 10 (``feat_layer``); the teacher is a trained ``MoEKDTeacher`` held as ``FrozenTeacher``
(not in the student's checkpoint). A_t is the spatial map of the expert the gate selected for the sample (CLIP:
patch tokens on the patch grid; ALIGN: its last CNN stage), |.| summed over channels, resized to the student's
grid. Eval: F_s (the neck and classifier are training-only).

Both read frozen expert outputs from an attached cache (``attach_cache``) when the batch's images are in it.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import torch
from fastreid.config import configurable
from fastreid.modeling.losses import cross_entropy_loss, triplet_loss
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY
from torch import nn

from ..compat.checkpoint import load_checkpoint_file
from ..modeling.losses.distillation import attention_transfer_loss, feature_mse_loss, gram_relation_loss, kd_loss
from ..modeling.heads.bnneck import bias_free_classifier, bnneck
from ..modeling.teachers import FrozenTeacher
from .build import build_mixture, resnet_from_cfg, resnet_width
from .experts import ExpertOutput
from .teacher_mixture import MixtureOutput, MoETeacher

__all__ = ["MoEKDTeacher", "MoEKDStudent", "RANDOM_TEACHER", "FEAT_LAYERS"]

logger = logging.getLogger("fastreid." + __name__)

RANDOM_TEACHER = "random"  # MOEKD.STUDENT.TEACHER_WEIGHTS for tests: a randomly initialised teacher, said aloud
FEAT_LAYERS = ("neck", "embedding")  # MOEKD.STUDENT.FEAT_LAYER: what L_feat compares


def _task_losses(feature, logits, targets, *, eps, beta, margin) -> Dict[str, torch.Tensor]:
    losses = {"loss_cls": cross_entropy_loss(logits, targets, eps)}
    if beta > 0:
        losses["loss_triplet"] = beta * triplet_loss(feature, targets, margin, False, True)
    return losses


def _targets(batched_inputs, device) -> torch.Tensor:
    if "targets" not in batched_inputs:
        raise KeyError("identity labels ('targets') missing in the training batch")
    return batched_inputs["targets"].to(device)


@META_ARCH_REGISTRY.register()
class MoEKDTeacher(nn.Module):
    """Batch dict (``images`` 0-255, ``targets``, ``img_paths``) -> loss dict (training) or F_t (eval)."""

    @configurable
    def __init__(self, *, mixture: MoETeacher, num_classes: int, triplet_weight: float = 0.5,
                 triplet_margin: float = 0.3, label_smooth: float = 0.0):
        """
        Args:
            mixture: the teacher body (frozen experts inside).
            num_classes: training identities (0: an evaluation-only model without a classifier).
            triplet_weight / triplet_margin: beta and alpha of Eq. 14-15.
            label_smooth: CE label smoothing (0: the paper's plain cross-entropy).
        """
        super().__init__()
        self.mixture = mixture
        self.bottleneck = bnneck(mixture.feat_dim)
        self.num_classes = int(num_classes)
        self.classifier = bias_free_classifier(mixture.feat_dim, self.num_classes) if self.num_classes > 0 else None
        self.triplet_weight, self.triplet_margin = float(triplet_weight), float(triplet_margin)
        self.label_smooth = float(label_smooth)
        self.cache = None  # an ExpertCache (plain attribute: never in the state dict)

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MOEKD
        return {"mixture": build_mixture(cfg), "num_classes": int(cfg.MODEL.HEADS.NUM_CLASSES),
                "triplet_weight": m.TRIPLET_WEIGHT, "triplet_margin": m.TRIPLET_MARGIN,
                "label_smooth": m.LABEL_SMOOTH}

    @property
    def device(self) -> torch.device:
        return self.mixture.device

    def attach_cache(self, cache) -> None:
        """Read frozen expert outputs from ``cache`` (``ExpertCache``) for the images it holds."""
        self.cache = cache

    def cached_outputs(self, batched_inputs) -> Optional[Dict[str, ExpertOutput]]:
        if self.cache is None or "img_paths" not in batched_inputs:
            return None
        return self.cache.lookup(batched_inputs["img_paths"], self.mixture.names, device=self.device)

    def encode(self, batched_inputs) -> MixtureOutput:
        return self.mixture(batched_inputs["images"], self.cached_outputs(batched_inputs))

    def logits(self, feature: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bottleneck(feature))

    def forward(self, batched_inputs):
        if not self.training:
            return self.encode(batched_inputs).feature
        return self.losses_of(batched_inputs, self.cached_outputs(batched_inputs))

    def losses_of(self, batched_inputs, cached: Optional[Dict[str, ExpertOutput]] = None) -> Dict[str, torch.Tensor]:
        """Training losses, the experts' outputs taken from ``cached`` when given."""
        if self.classifier is None:
            raise RuntimeError("this MoEKDTeacher has no classifier (MODEL.HEADS.NUM_CLASSES 0): eval only")
        targets = _targets(batched_inputs, self.device)
        out = self.mixture(batched_inputs["images"], cached)
        return _task_losses(out.feature, self.logits(out.feature), targets, eps=self.label_smooth,
                            beta=self.triplet_weight, margin=self.triplet_margin)


def load_teacher(cfg, num_classes: int) -> MoEKDTeacher:
    """The trained ``MoEKDTeacher`` of ``MOEKD.STUDENT.TEACHER_WEIGHTS`` (weights_only), built from ``cfg``."""
    path = cfg.MOEKD.STUDENT.TEACHER_WEIGHTS
    c = cfg.clone()
    c.defrost()
    c.MOEKD.FUSION = "moe"
    c.MODEL.HEADS.NUM_CLASSES = num_classes
    teacher = MoEKDTeacher(c)
    if path == RANDOM_TEACHER:
        logger.warning("MOEKD.STUDENT.TEACHER_WEIGHTS 'random': distilling from an UNTRAINED teacher (tests only)")
        return teacher
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MOEKD.STUDENT.TEACHER_WEIGHTS '{path}' does not exist (the 'moe' row's "
                                f"model_final.pth)")
    state = load_checkpoint_file(path)["model"]
    own = teacher.state_dict()
    bad = [k for k, v in own.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    extra = [k for k in state if k not in own]
    if bad or extra:
        raise KeyError(f"'{path}' does not fit the MoE teacher of this config: mismatched/missing {bad[:4]}, "
                       f"unexpected {extra[:4]} (another training set, FEAT_DIM or gate input?)")
    teacher.load_state_dict(state)
    logger.info(f"MoE-KD student: teacher loaded from {path}")
    return teacher


@META_ARCH_REGISTRY.register()
class MoEKDStudent(nn.Module):
    """Batch dict -> loss dict (training: task + distillation) or F_s (eval)."""

    @configurable
    def __init__(self, *, backbone: nn.Module, backbone_dim: int, num_classes: int, pixel_mean, pixel_std,
                 teacher: Optional[MoEKDTeacher] = None, proj_dim: int = 2048, triplet_weight: float = 0.5,
                 triplet_margin: float = 0.3, label_smooth: float = 0.0, kd_weight: float = 0.5,
                 kd_temperature: float = 4.0, feat_weight: float = 0.3, att_weight: float = 0.1,
                 rel_weight: float = 0.1, feat_layer: str = "neck"):
        """
        Args:
            backbone: images (B, 3, H, W) normalised -> (B, backbone_dim, h, w) (fast-reid ResNet-18: 512).
            num_classes: training identities (0: evaluation only, no classifier, no teacher needed).
            pixel_mean / pixel_std: 0-255 normalisation (ImageNet).
            teacher: the trained MoE teacher (frozen here); needed when a distillation weight is > 0.
            proj_dim: projection FC(backbone_dim -> proj_dim) + BN + ReLU (2048 = the teacher's D).
            triplet_weight / triplet_margin / label_smooth: L_task as the teacher's.
            kd_weight / kd_temperature / feat_weight / att_weight / rel_weight: lambda_1..4 and T (Eq. 13, 16).
            feat_layer: what L_feat (Eq. 10) compares: "neck" = the classifier inputs (each model's BNNeck output:
                the teacher's with its running statistics), "embedding" = F_s with the teacher feature F_t as they
                are (different scales and signs: F_s is a BN + ReLU output, F_t a linear layer's).
        """
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Sequential(nn.Linear(backbone_dim, proj_dim), nn.BatchNorm1d(proj_dim),
                                        nn.ReLU(inplace=True))
        self.num_classes = int(num_classes)
        # the teacher's head: BNNeck + bias-free classifier on F_s. The neck decouples the logits from F_s's scale
        # and is the layer L_feat compares (README "Student ablation"). Built always (as the teacher's), so that a
        # trained checkpoint loads strictly into an evaluation-only student; inference does not run it.
        self.bottleneck = bnneck(proj_dim)
        self.classifier = bias_free_classifier(proj_dim, self.num_classes) if self.num_classes > 0 else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        if feat_layer not in FEAT_LAYERS:
            raise ValueError(f"MOEKD.STUDENT.FEAT_LAYER must be one of {FEAT_LAYERS}, got {feat_layer!r}")
        self.feat_layer = feat_layer
        self.weights = {"kd": float(kd_weight), "feat": float(feat_weight), "att": float(att_weight),
                        "rel": float(rel_weight)}
        distils = any(w > 0 for w in self.weights.values())
        if self.num_classes > 0 and distils and teacher is None:
            raise ValueError("MoEKDStudent with distillation weights > 0 needs a teacher: set "
                             "MOEKD.STUDENT.TEACHER_WEIGHTS (the 'moe' row's model_final.pth)")
        if teacher is not None:
            if teacher.mixture.feat_dim != proj_dim and (feat_weight > 0):
                raise ValueError(f"feature distillation needs PROJ_DIM {proj_dim} == the teacher's D "
                                 f"{teacher.mixture.feat_dim}")
            if teacher.num_classes != self.num_classes and kd_weight > 0:
                raise ValueError(f"KD needs the teacher's {teacher.num_classes} classes == the student's "
                                 f"{self.num_classes} (the same training set)")
        self.teacher = FrozenTeacher(teacher) if teacher is not None else None
        self.kd_temperature = float(kd_temperature)
        self.triplet_weight, self.triplet_margin = float(triplet_weight), float(triplet_margin)
        self.label_smooth = float(label_smooth)

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MOEKD.STUDENT
        num_classes = int(cfg.MODEL.HEADS.NUM_CLASSES)
        teacher = load_teacher(cfg, num_classes) if num_classes > 0 and s.TEACHER_WEIGHTS else None
        return {"backbone": resnet_from_cfg(cfg, s.DEPTH), "backbone_dim": resnet_width(s.DEPTH),
                "num_classes": num_classes, "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
                "pixel_std": list(cfg.MODEL.PIXEL_STD), "teacher": teacher, "proj_dim": int(s.PROJ_DIM),
                "triplet_weight": cfg.MOEKD.TRIPLET_WEIGHT, "triplet_margin": cfg.MOEKD.TRIPLET_MARGIN,
                "label_smooth": cfg.MOEKD.LABEL_SMOOTH, "kd_weight": s.KD_WEIGHT,
                "kd_temperature": s.KD_TEMPERATURE, "feat_weight": s.FEAT_WEIGHT, "att_weight": s.ATT_WEIGHT,
                "rel_weight": s.REL_WEIGHT, "feat_layer": s.FEAT_LAYER}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def attach_cache(self, cache) -> None:
        """The teacher reads its frozen expert outputs from ``cache``."""
        if self.teacher is not None:
            self.teacher.module.attach_cache(cache)

    def features(self, images: torch.Tensor):
        """0-255 images -> (stage-4 map (B, C, h, w), F_s (B, proj_dim))."""
        x = (images.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
        fmap = self.backbone(x)
        return fmap, self.projection(fmap.mean(dim=(2, 3)))

    def num_deployed_parameters(self) -> int:
        """Parameters inference runs: backbone + projection (the neck and classifier are training-only)."""
        return sum(p.numel() for m in (self.backbone, self.projection) for p in m.parameters())

    def logits(self, feature: torch.Tensor) -> torch.Tensor:
        """F_s (B, proj_dim) -> z_s (B, num_classes) through the BNNeck, as the teacher's z_t."""
        return self.classifier(self.bottleneck(feature))

    def forward(self, batched_inputs):
        if not self.training:
            return self.features(batched_inputs["images"])[1]
        if self.classifier is None:
            raise RuntimeError("this MoEKDStudent has no classifier (MODEL.HEADS.NUM_CLASSES 0): eval only")
        targets = _targets(batched_inputs, self.device)
        fmap, feat = self.features(batched_inputs["images"])
        neck = self.bottleneck(feat)
        logits = self.classifier(neck)
        losses = _task_losses(feat, logits, targets, eps=self.label_smooth, beta=self.triplet_weight,
                              margin=self.triplet_margin)
        if self.teacher is None:
            return losses
        with torch.no_grad():
            teacher = self.teacher.module
            t = teacher.encode(batched_inputs)
            t_logits = teacher.logits(t.feature) if teacher.classifier is not None else None
        w = self.weights
        if w["kd"] > 0:
            losses["loss_kd"] = w["kd"] * kd_loss(logits, t_logits, self.kd_temperature)
        if w["feat"] > 0:
            if self.feat_layer == "neck":  # the classifier inputs: both standardised, both signed
                with torch.no_grad():
                    t_neck = teacher.bottleneck(t.feature)
                losses["loss_feat"] = w["feat"] * feature_mse_loss(neck, t_neck)
            else:
                losses["loss_feat"] = w["feat"] * feature_mse_loss(feat, t.feature)
        if w["att"] > 0:
            losses["loss_att"] = w["att"] * attention_transfer_loss(fmap, t.attention)
        if w["rel"] > 0:
            losses["loss_rel"] = w["rel"] * gram_relation_loss(feat, t.feature)
        return losses
