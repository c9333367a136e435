"""Config translation shared by every tool: the plugin's shared keys (``add_plugins_config``), the one list of
methods (``METHODS``), and the one config-setup function (``setup_cfg``) that train_net, the tools and the tests
call. A method's own keys live in ``plugins/<method>/config.py`` as ``add_<method>_config(cfg)``.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Dict, Sequence

from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg

from .data.config import add_data_config
from .modeling.config import add_clip_backbone_config, add_clipreid_model_config, add_vit_backbone_config

__all__ = ["METHODS", "import_methods", "method_config_adders", "add_plugins_config", "setup_cfg",
           "check_dataset_names"]

# The methods, in one place: name -> package. Importing a package registers its components; its config.py holds
# add_<name>_config. A new method is one line here plus its folder under plugins/ and configs/.
METHODS: Dict[str, str] = {
    "sage": "plugins.sage",
    "clipreid": "plugins.clipreid",
    "mosaic": "plugins.mosaic",
    "moekd": "plugins.moekd",
    "dmadapter": "plugins.dmadapter",
    "demo": "plugins.demo",
}


def import_methods() -> None:
    """Import every method package (registers their trainers, meta-architectures, ...)."""
    for package in METHODS.values():
        importlib.import_module(package)


def method_config_adders() -> Dict[str, Callable]:
    """name -> ``add_<name>_config`` of every method."""
    return {name: getattr(importlib.import_module(f"{pkg}.config"), f"add_{name}_config")
            for name, pkg in METHODS.items()}


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
    add_data_config(cfg)  # PLUGINS.DATA.* (what batches carry besides images)
    add_vit_backbone_config(cfg)  # MODEL.BACKBONE.TIMM_VIT.*
    add_clip_backbone_config(cfg)  # MODEL.BACKBONE.CLIP.*
    add_clipreid_model_config(cfg)  # CLIPREID.* (the CLIP-ReID model and its two stages)
    return cfg


def setup_cfg(config_file: str = "", opts: Sequence[str] = (), *, freeze: bool = True):
    """fast-reid defaults + plugin keys + every method's keys + ``config_file`` + ``opts`` (KEY VALUE ...),
    adjusted for the host; the config every tool and test builds."""
    from .compat.config_fixes import adjust_config_for_host

    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file '{config_file}' does not exist")
    cfg = add_plugins_config(get_cfg())
    for add in method_config_adders().values():
        add(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    adjust_config_for_host(cfg)
    check_dataset_names(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def check_dataset_names(cfg) -> None:
    """Every name in ``DATASETS.NAMES`` / ``DATASETS.TESTS`` is a registered reader: a misspelt test set fails here,
    before any training, not at the final evaluation after it."""
    from fastreid.data.datasets import DATASET_REGISTRY

    known = set(DATASET_REGISTRY._obj_map)
    for key in ("NAMES", "TESTS"):
        unknown = [n for n in cfg.DATASETS[key] if n not in known]
        if unknown:
            raise KeyError(f"DATASETS.{key} names unregistered datasets {unknown}; registered: {sorted(known)}")

