"""timm Vision Transformer as a fast-reid backbone (``MODEL.BACKBONE.NAME: build_timm_vit_backbone``).

Follows fast-reid's own ``vision_transformer.py`` convention: the final-norm CLS token is returned as
(B, D, 1, 1), so ``EmbeddingHead`` (GlobalAvgPool -> BNNeck -> classifier) works unchanged. timm builds the
model (any ViT name, any input size); ImageNet weights come from a local file (safetensors, or a torch file
read with ``weights_only=True``) and timm's ``checkpoint_filter_fn`` resamples the position embedding (e.g.
14x14 -> 16x8 for 256x128). timm's hub is used only when ``HUB_PRETRAINED`` asks for it.
Optional SIE camera embedding (TransReID): a learnable vector per camera added to every token, off by default.
"""
import logging
import os
from typing import Dict, Optional, Sequence

import timm
import torch
from fastreid.modeling.backbones.build import BACKBONE_REGISTRY
from timm.layers import trunc_normal_
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

logger = logging.getLogger(__name__)


class TimmViTBackbone(nn.Module):
    """Images (B, 3, H, W) [+ camera ids (B,)] -> CLS feature (B, D, 1, 1). The timm model is ``self.vit``."""

    def __init__(self, *, model_name: str, img_size: Sequence[int], drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, num_cameras: int = 0, sie_coef: float = 3.0,
                 hub_pretrained: bool = False, architecture: Optional[Dict[str, int]] = None):
        """
        Args:
            model_name: timm model name, e.g. ``vit_base_patch16_224``.
            img_size: (H, W) of the input, e.g. (256, 128) -> 16x8 patches + CLS = 129 tokens.
            drop_path_rate: stochastic depth rate (linearly increasing over blocks, timm's rule).
            drop_rate: dropout after the position embedding / in the MLPs.
            attn_drop_rate: attention dropout.
            num_cameras: > 0 adds a learnable SIE camera embedding per camera id; 0 disables it.
            sie_coef: scale of the camera embedding (TransReID's lambda).
            hub_pretrained: download timm's pretrained weights (needs internet); otherwise random init.
            architecture: overrides of the named model's shape (``patch_size``, ``embed_dim``, ``depth``,
                ``num_heads``), e.g. a small ViT for CPU runs; ``None`` keeps timm's definition.
        """
        super().__init__()
        self.vit = timm.create_model(model_name, pretrained=hub_pretrained, img_size=tuple(img_size),
                                     num_classes=0, drop_path_rate=drop_path_rate, drop_rate=drop_rate,
                                     attn_drop_rate=attn_drop_rate, **(architecture or {}))
        if getattr(self.vit, "cls_token", None) is None:
            raise ValueError(f"timm model {model_name!r} has no CLS token; this backbone returns the CLS feature")
        self.num_features = self.vit.num_features
        self.num_cameras = num_cameras
        self.sie_coef = sie_coef
        if num_cameras > 0:
            self.sie_embed = nn.Parameter(torch.zeros(num_cameras, 1, self.num_features))
            trunc_normal_(self.sie_embed, std=0.02)
        else:
            self.sie_embed = None

    @property
    def uses_camids(self) -> bool:
        """Whether ``forward`` reads the camera ids (SIE on)."""
        return self.sie_embed is not None

    def forward(self, x: torch.Tensor, camids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, 3, H, W), camids (B,) int or None -> (B, D, 1, 1)."""
        if self.sie_embed is None:
            tokens = self.vit.forward_features(x)
        else:
            if camids is None:
                raise ValueError("the SIE camera embedding is on (NUM_CAMERAS > 0) but no camera ids were given")
            camids = camids.long().to(x.device)
            if camids.min() < 0 or camids.max() >= self.num_cameras:
                raise ValueError(f"camera id {int(camids.max())} outside [0, {self.num_cameras}); raise "
                                 f"MODEL.BACKBONE.TIMM_VIT.NUM_CAMERAS")
            # timm's forward_features with the camera term added after the position embedding (timm has no
            # hook for it), following the steps of timm's VisionTransformer.forward_features.
            v = self.vit
            h = v._pos_embed(v.patch_embed(x))
            h = h + self.sie_coef * self.sie_embed[camids]
            h = v.norm_pre(v.patch_drop(h))
            tokens = v.norm(v.blocks(h))
        return tokens[:, 0].reshape(x.shape[0], -1, 1, 1)


def load_pretrained_vit(vit: nn.Module, path: str) -> None:
    """Load ImageNet weights from a local file into a timm ViT; pos-embed resampled to the model's grid.
    Raises when the file is missing or any backbone weight is absent from it (the classifier head is dropped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.BACKBONE.PRETRAIN_PATH {path!r} does not exist")
    if path.endswith(".safetensors"):
        from ...compat.checkpoint import read_safetensors

        state = read_safetensors(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    state = {k: v for k, v in checkpoint_filter_fn(state, vit).items() if not k.startswith("head.")}
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if missing:
        raise KeyError(f"{path}: weights missing for {missing[:5]} ({len(missing)} keys)")
    if unexpected:
        logger.info(f"{path}: ignored keys {unexpected[:5]} ({len(unexpected)} keys)")
    logger.info(f"Loaded pretrained ViT weights from {path}")


@BACKBONE_REGISTRY.register()
def build_timm_vit_backbone(cfg):
    """fast-reid builder: keys ``MODEL.BACKBONE.TIMM_VIT.*`` (plugins.modeling.config) plus the host's
    ``PRETRAIN``, ``PRETRAIN_PATH``, ``DROP_PATH_RATIO``, ``DROP_RATIO``, ``ATT_DROP_RATE``, ``SIE_COE``."""
    bb = cfg.MODEL.BACKBONE
    img_size = tuple(bb.TIMM_VIT.IMG_SIZE)
    if tuple(cfg.INPUT.SIZE_TRAIN) != img_size or tuple(cfg.INPUT.SIZE_TEST) != img_size:
        raise ValueError(f"MODEL.BACKBONE.TIMM_VIT.IMG_SIZE {list(img_size)} must equal INPUT.SIZE_TRAIN "
                         f"{list(cfg.INPUT.SIZE_TRAIN)} and INPUT.SIZE_TEST {list(cfg.INPUT.SIZE_TEST)}")
    use_hub = bool(bb.PRETRAIN and not bb.PRETRAIN_PATH and bb.TIMM_VIT.HUB_PRETRAINED)
    if bb.PRETRAIN and not bb.PRETRAIN_PATH and not use_hub:
        raise ValueError("MODEL.BACKBONE.PRETRAIN is on but PRETRAIN_PATH is empty; give a local weights file or "
                         "set MODEL.BACKBONE.TIMM_VIT.HUB_PRETRAINED True to download timm's weights")
    # 0 keeps the named model's value; an override changes the shape, so hub weights no longer fit.
    architecture = {k.lower(): int(v) for k, v in (("PATCH_SIZE", bb.TIMM_VIT.PATCH_SIZE),
                    ("EMBED_DIM", bb.TIMM_VIT.EMBED_DIM), ("DEPTH", bb.TIMM_VIT.DEPTH),
                    ("NUM_HEADS", bb.TIMM_VIT.NUM_HEADS)) if int(v) > 0}
    if architecture and use_hub:
        raise ValueError(f"MODEL.BACKBONE.TIMM_VIT overrides {architecture} change {bb.TIMM_VIT.NAME}'s shape: its "
                         f"hub weights would not fit; turn HUB_PRETRAINED off or clear the overrides")
    model = TimmViTBackbone(model_name=bb.TIMM_VIT.NAME, img_size=img_size, drop_path_rate=bb.DROP_PATH_RATIO,
                            drop_rate=bb.DROP_RATIO, attn_drop_rate=bb.ATT_DROP_RATE,
                            num_cameras=bb.TIMM_VIT.NUM_CAMERAS, sie_coef=bb.SIE_COE, hub_pretrained=use_hub,
                            architecture=architecture)
    if model.num_features != bb.FEAT_DIM:
        raise ValueError(f"MODEL.BACKBONE.FEAT_DIM is {bb.FEAT_DIM} but {bb.TIMM_VIT.NAME} outputs "
                         f"{model.num_features} features")
    if bb.PRETRAIN and bb.PRETRAIN_PATH:
        load_pretrained_vit(model.vit, bb.PRETRAIN_PATH)
    return model
