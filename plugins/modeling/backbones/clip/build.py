"""Config translation for the CLIP towers (``MODEL.BACKBONE.CLIP.*``, see ``plugins/modeling/config.py``): the one
place where a config becomes an open_clip model with its weights, and the fast-reid backbone
``build_clip_backbone`` (the image tower as a fast-reid backbone for ``Baseline`` / ``CameraAwareBaseline``)."""
from __future__ import annotations

import logging
import os

import torch
from fastreid.modeling.backbones.build import BACKBONE_REGISTRY
from open_clip.model import CLIP
from torch import nn

from .image_encoder import CLIPImageEncoder
from .model import build_clip_model
from .weights import load_clip_weights

__all__ = ["TINY", "clip_width", "clip_from_cfg", "image_encoder_from_cfg", "CLIPImageBackbone", "build_clip_backbone"]

logger = logging.getLogger("fastreid." + __name__)

TINY = "tiny"  # MODEL.BACKBONE.CLIP.NAME of the small CLIP pre-trained on the procedural data
WEIGHTS_HUB = "openai"  # MODEL.BACKBONE.CLIP.WEIGHTS: download OpenAI's release through open_clip (online only)
WEIGHTS_PROCEDURAL = "procedural"  # MODEL.BACKBONE.CLIP.WEIGHTS: the tiny CLIP's cached procedural pre-training


def _model_spec(name: str):
    if name == TINY:
        from .tiny import TINY_CLIP_CONFIG

        return TINY_CLIP_CONFIG
    return name


def clip_width(name: str) -> int:
    """Width D of the image tower of model ``name`` (an open_clip name or "tiny")."""
    from .model import clip_model_config

    return int(clip_model_config(_model_spec(name))["vision_cfg"]["width"])


def _weights_path(cfg) -> str:
    """The local weights file of ``MODEL.BACKBONE.CLIP.WEIGHTS`` ('' = random init)."""
    c = cfg.MODEL.BACKBONE.CLIP
    weights = str(c.WEIGHTS)
    if weights == WEIGHTS_PROCEDURAL:
        if c.NAME != TINY:
            raise ValueError(f"MODEL.BACKBONE.CLIP.WEIGHTS '{WEIGHTS_PROCEDURAL}' are the tiny CLIP's: set "
                             f"MODEL.BACKBONE.CLIP.NAME to '{TINY}' (got {c.NAME!r})")
        from fastreid.data.build import _root  # $FASTREID_DATASETS as fast-reid read it at import

        from .tiny import tiny_clip_weights

        return tiny_clip_weights(_root)
    if weights == WEIGHTS_HUB:
        import open_clip
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        pcfg = get_pretrained_cfg(c.NAME, "openai")
        if not pcfg:
            raise KeyError(f"open_clip has no OpenAI weights for {c.NAME!r}; give a local file in "
                           f"MODEL.BACKBONE.CLIP.WEIGHTS")
        logger.info(f"downloading OpenAI's {c.NAME} weights through open_clip {open_clip.__version__}")
        return download_pretrained(pcfg)
    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.BACKBONE.CLIP.WEIGHTS '{weights}' does not exist (a local file, "
                                f"'{WEIGHTS_HUB}' to download OpenAI's release, or '{WEIGHTS_PROCEDURAL}' with "
                                f"NAME '{TINY}')")
    return weights


def clip_from_cfg(cfg, *, load_weights: bool = True) -> CLIP:
    """The open_clip ``CLIP`` of ``MODEL.BACKBONE.CLIP`` at ``INPUT.SIZE_TRAIN``, weights loaded (positional
    embedding resized bilinearly to the input grid) unless ``load_weights`` is False."""
    c = cfg.MODEL.BACKBONE.CLIP
    size = tuple(int(v) for v in cfg.INPUT.SIZE_TRAIN)
    if tuple(int(v) for v in cfg.INPUT.SIZE_TEST) != size:
        raise ValueError(f"INPUT.SIZE_TEST {list(cfg.INPUT.SIZE_TEST)} must equal INPUT.SIZE_TRAIN {list(size)} for "
                         f"the CLIP image tower (one positional-embedding grid)")
    model = build_clip_model(_model_spec(c.NAME), image_size=size, quick_gelu=bool(c.QUICK_GELU))
    path = _weights_path(cfg) if load_weights else ""
    if path:
        load_clip_weights(model, path)
        logger.info(f"loaded CLIP weights from {path}")
    return model


def image_encoder_from_cfg(cfg, clip: CLIP) -> CLIPImageEncoder:
    c = cfg.MODEL.BACKBONE.CLIP
    return CLIPImageEncoder(clip.visual, num_cameras=int(c.NUM_CAMERAS), num_views=int(c.NUM_VIEWS),
                            sie_coef=float(cfg.MODEL.BACKBONE.SIE_COE))


class CLIPImageBackbone(nn.Module):
    """fast-reid backbone view of the image tower: images (B, 3, H, W) [+ camids] -> (B, C, 1, 1), C = width for
    ``feature="cls"``, embed dim for ``"proj"``, their sum for ``"cls+proj"`` (concatenated)."""

    FEATURES = ("cls", "proj", "cls+proj")

    def __init__(self, encoder: CLIPImageEncoder, *, feature: str = "cls"):
        super().__init__()
        if feature not in self.FEATURES:
            raise ValueError(f"MODEL.BACKBONE.CLIP.FEATURE must be one of {self.FEATURES}, got {feature!r}")
        self.encoder = encoder
        self.feature = feature
        if feature == "cls":  # the projection does not enter this feature: keep it out of the optimizer
            encoder.visual.proj.requires_grad_(False)
        self.num_features = {"cls": encoder.width, "proj": encoder.embed_dim,
                             "cls+proj": encoder.width + encoder.embed_dim}[feature]

    @property
    def uses_camids(self) -> bool:
        return self.encoder.uses_camids

    def forward(self, images: torch.Tensor, camids=None) -> torch.Tensor:
        out = self.encoder(images, camids)
        feat = {"cls": lambda: out.cls, "proj": lambda: out.proj,
                "cls+proj": lambda: torch.cat([out.cls, out.proj], dim=1)}[self.feature]()
        return feat[..., None, None]


@BACKBONE_REGISTRY.register()
def build_clip_backbone(cfg):
    """fast-reid builder: ``MODEL.BACKBONE.CLIP.*`` + the host's ``SIE_COE``; FEAT_DIM must match the feature."""
    clip = clip_from_cfg(cfg, load_weights=bool(cfg.MODEL.BACKBONE.PRETRAIN))
    backbone = CLIPImageBackbone(image_encoder_from_cfg(cfg, clip), feature=cfg.MODEL.BACKBONE.CLIP.FEATURE)
    if backbone.num_features != cfg.MODEL.BACKBONE.FEAT_DIM:
        raise ValueError(f"MODEL.BACKBONE.FEAT_DIM is {cfg.MODEL.BACKBONE.FEAT_DIM} but the CLIP feature "
                         f"{cfg.MODEL.BACKBONE.CLIP.FEATURE!r} has {backbone.num_features} channels")
    del clip  # the text tower is not part of this backbone
    return backbone
