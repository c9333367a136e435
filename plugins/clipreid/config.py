"""CLIP-ReID pipeline keys (``add_clipreid_config``: ``CLIPREID.BASELINES``, ``BASELINE_OPTS``).
The model's and the two stages' keys (``CLIPREID.*``) are shared with MoSAIC-ReID and live in
``plugins/modeling/config.py`` (``add_clipreid_model_config``); the CLIP towers are ``MODEL.BACKBONE.CLIP.*``."""
from fastreid.config import CfgNode as CN

__all__ = ["add_clipreid_config", "BASELINES"]

# Optional extra rows of the pipeline (CLIPREID.BASELINES): name -> what it trains.
BASELINES = {
    "no_i2t": "stage 2 without the image-to-text loss (no prompts needed)",
    "image_only": "fast-reid Baseline on the CLIP image tower (CLS, one BNNeck, CE + triplet)",
}


def add_clipreid_config(cfg):
    """Add the CLIP-ReID pipeline keys to a fast-reid config (which has ``CLIPREID`` already), in place."""
    if "CLIPREID" not in cfg:
        cfg.CLIPREID = CN()
    # Extra rows of the pipeline (PLUGINS.TRAINER CLIPReIDPipeline): names of BASELINES above.
    cfg.CLIPREID.BASELINES = []
    # Solver overrides of the "image_only" baseline row (KEY VALUE ...), applied after STAGE2_OPTS.
    cfg.CLIPREID.BASELINE_OPTS = []
    return cfg
