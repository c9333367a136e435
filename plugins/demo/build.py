"""Config translation for ``DeMo`` (the one place where a config becomes the cfg-free modules)."""
from __future__ import annotations

from ..modeling.backbones.clip import clip_from_cfg, image_encoder_from_cfg
from .encoders import CLIPTokenEncoder, TimmTokenEncoder

__all__ = ["encoder_from_cfg", "demo_kwargs_from_cfg", "BACKBONES"]

BACKBONES = ("clip", "timm")


def encoder_from_cfg(cfg):
    """The shared token encoder of ``DEMO.BACKBONE`` (weights per ``MODEL.BACKBONE.PRETRAIN``)."""
    kind = cfg.DEMO.BACKBONE
    if kind == "clip":
        clip = clip_from_cfg(cfg, load_weights=bool(cfg.MODEL.BACKBONE.PRETRAIN))
        encoder = CLIPTokenEncoder(image_encoder_from_cfg(cfg, clip))
        del clip  # the text tower is not part of DeMo
        return encoder
    if kind == "timm":
        from ..modeling.backbones.timm_vit import build_timm_vit_backbone

        return TimmTokenEncoder(build_timm_vit_backbone(cfg))
    raise ValueError(f"DEMO.BACKBONE must be one of {BACKBONES}, got {kind!r}")


def demo_kwargs_from_cfg(cfg) -> dict:
    d = cfg.DEMO
    return {"encoder": encoder_from_cfg(cfg), "num_classes": int(cfg.MODEL.HEADS.NUM_CLASSES),
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN), "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "modalities": tuple(cfg.PLUGINS.DATA.MODALITIES), "pife": bool(d.PIFE), "hdm": bool(d.HDM),
            "atmoe": bool(d.ATMOE), "hdm_heads": int(d.HDM_HEADS), "hdm_dropout": float(d.HDM_DROPOUT),
            "moe_heads": int(d.MOE_HEADS), "gate": d.GATE, "combine": d.COMBINE, "test_feature": d.TEST_FEATURE,
            "heads": d.HEADS, "id_weight": float(d.ID_WEIGHT), "triplet_weight": float(d.TRIPLET_WEIGHT),
            "label_smooth": float(d.LABEL_SMOOTH), "triplet_margin": float(d.TRIPLET_MARGIN),
            "missing": tuple(d.TEST.MISSING)}
