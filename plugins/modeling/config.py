"""Config keys of the shared model components (called from ``plugins.config.add_plugins_config``)."""
from fastreid.config import CfgNode as CN


def add_vit_backbone_config(cfg):
    """Keys of ``build_timm_vit_backbone``; it also reads the host's PRETRAIN, PRETRAIN_PATH (local weights file:
    safetensors or torch), DROP_PATH_RATIO, DROP_RATIO, ATT_DROP_RATE and SIE_COE."""
    cfg.MODEL.BACKBONE.TIMM_VIT = CN()
    # timm model name (ViT-B/16: vit_base_patch16_224; set FEAT_DIM to its width, 768).
    cfg.MODEL.BACKBONE.TIMM_VIT.NAME = "vit_base_patch16_224"
    # Input (H, W); must equal INPUT.SIZE_TRAIN/SIZE_TEST. 256x128 with patch 16 -> 129 tokens.
    cfg.MODEL.BACKBONE.TIMM_VIT.IMG_SIZE = [256, 128]
    # With PRETRAIN on and PRETRAIN_PATH empty: download timm's weights (needs internet). Off: a local file.
    cfg.MODEL.BACKBONE.TIMM_VIT.HUB_PRETRAINED = False
    # SIE camera embedding (TransReID): number of camera ids; 0 = off. Needs META_ARCHITECTURE CameraAwareBaseline.
    cfg.MODEL.BACKBONE.TIMM_VIT.NUM_CAMERAS = 0
    # Shape overrides of the named timm model (0 = keep): patch size, width, number of blocks, attention heads.
    # For small CPU runs (e.g. the SAGE demo); real experiments keep the named model and its pretrained weights.
    cfg.MODEL.BACKBONE.TIMM_VIT.PATCH_SIZE = 0
    cfg.MODEL.BACKBONE.TIMM_VIT.EMBED_DIM = 0
    cfg.MODEL.BACKBONE.TIMM_VIT.DEPTH = 0
    cfg.MODEL.BACKBONE.TIMM_VIT.NUM_HEADS = 0
    return cfg
