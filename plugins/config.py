"""``add_plugins_config(cfg)``: the plugin's shared config keys (method keys live in each method's config.py)."""
from fastreid.config import CfgNode as CN


def add_plugins_config(cfg):
    """Add the keys shared by every plugin method to a fast-reid config, in place."""
    cfg.PLUGINS = CN()
    # Name of the trainer class in plugins.registry.TRAINER_REGISTRY that tools/train_net.py runs.
    cfg.PLUGINS.TRAINER = "DefaultTrainer"
    from .modeling.config import add_vit_backbone_config  # MODEL.BACKBONE.TIMM_VIT.*

    add_vit_backbone_config(cfg)
    return cfg
