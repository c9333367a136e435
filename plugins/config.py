"""``add_plugins_config(cfg)``: the plugin's shared config keys (method keys live in each method's config.py)."""
from fastreid.config import CfgNode as CN

from .modeling.config import add_vit_backbone_config


def add_plugins_config(cfg):
    """Add the keys shared by every plugin method to a fast-reid config, in place."""
    cfg.PLUGINS = CN()
    # Name of the trainer class in plugins.registry.TRAINER_REGISTRY that tools/train_net.py runs.
    cfg.PLUGINS.TRAINER = "DefaultTrainer"
    # Seed of every RNG (python, numpy, torch; + the process rank) set by tools/train_net.py; < 0 keeps
    # fast-reid's behaviour (a fresh random seed per run).
    cfg.PLUGINS.SEED = -1
    cfg.PLUGINS.PSEUDO_LABEL = CN()  # clustering pseudo-labels (plugins.engine.PseudoLabelTrainer)
    # k of the k-reciprocal sets of the Jaccard distance.
    cfg.PLUGINS.PSEUDO_LABEL.K1 = 30
    # Local query expansion size of the Jaccard distance (1: none).
    cfg.PLUGINS.PSEUDO_LABEL.K2 = 6
    # DBSCAN eps: "fixed" uses EPS; "rho" is computed at the first clustering from RHO and then reused.
    cfg.PLUGINS.PSEUDO_LABEL.EPS_MODE = "fixed"
    # DBSCAN eps when EPS_MODE is "fixed", in (0, 1).
    cfg.PLUGINS.PSEUDO_LABEL.EPS = 0.6
    # "rho" eps = mean of the smallest RHO fraction of the pairwise Jaccard distances.
    cfg.PLUGINS.PSEUDO_LABEL.RHO = 1.6e-3
    # DBSCAN min_samples (the point itself included).
    cfg.PLUGINS.PSEUDO_LABEL.MIN_SAMPLES = 4
    # Re-cluster before every PERIOD-th epoch, starting at epoch 0.
    cfg.PLUGINS.PSEUDO_LABEL.PERIOD = 1
    # Keep the centroid-initialised classifier frozen (a prototype classifier, as the SAGE code) or train it.
    cfg.PLUGINS.PSEUDO_LABEL.CLASSIFIER_FROZEN = True
    # Images per feature-extraction batch (all ranks together); 0 uses TEST.IMS_PER_BATCH.
    cfg.PLUGINS.PSEUDO_LABEL.FEATURE_BATCH = 0
    add_vit_backbone_config(cfg)  # MODEL.BACKBONE.TIMM_VIT.*
    return cfg
