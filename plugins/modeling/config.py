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


def add_clip_backbone_config(cfg):
    """Keys of the CLIP towers (``plugins.modeling.backbones.clip.build``); the image tower also reads the host's
    ``PRETRAIN`` (load ``WEIGHTS``; off = random init) and ``SIE_COE`` (coefficient of the camera embedding)."""
    cfg.MODEL.BACKBONE.CLIP = CN()
    # open_clip model name (ViT-B-16 for CLIP-ReID / DM-Adapter / DeMo), or "tiny" for the small CLIP pre-trained
    # on the procedural data (plugins/modeling/backbones/clip/tiny.py).
    cfg.MODEL.BACKBONE.CLIP.NAME = "ViT-B-16"
    # QuickGELU (x * sigmoid(1.702 x)) as OpenAI's released weights; nn.GELU otherwise.
    cfg.MODEL.BACKBONE.CLIP.QUICK_GELU = True
    # Weights: "" random init; a local file (OpenAI TorchScript .pt, open_clip checkpoint, state dict or
    # .safetensors); "openai" downloads OpenAI's release through open_clip (needs internet, never tried
    # otherwise); "procedural" the tiny CLIP's cached pre-training (NAME "tiny"; trained on first use).
    # The image tower's positional embedding is resized bilinearly to INPUT.SIZE_TRAIN.
    cfg.MODEL.BACKBONE.CLIP.WEIGHTS = ""
    # SIE (camera / view embedding on the CLS token): number of camera ids / view ids; 0 = off.
    cfg.MODEL.BACKBONE.CLIP.NUM_CAMERAS = 0
    cfg.MODEL.BACKBONE.CLIP.NUM_VIEWS = 0
    # Output of build_clip_backbone (fast-reid Baseline heads): "cls" (after ln_post), "proj" (CLIP embedding)
    # or "cls+proj" (concatenated). FEAT_DIM must equal its width.
    cfg.MODEL.BACKBONE.CLIP.FEATURE = "cls"
    return cfg
