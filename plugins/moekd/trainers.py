"""``MoEKDTrainer`` (TRAINER_REGISTRY): fast-reid's ``DefaultTrainer`` for every MoE-KD row, with
- the paper's input: aspect-preserving resize + zero padding (``MOEKD.PAD_TO_SQUARE``) in train and test loaders;
- the teacher-feature cache (``MOEKD.CACHE``): before training, the frozen experts run once over the training and
  test images (augmentation-free view) and the model reads their outputs from the cache from then on.
Models without frozen experts (the ResNet-50 base row) train as fast-reid's Baseline would."""
from __future__ import annotations

import logging
import os
from typing import Optional

from fastreid.engine import DefaultTrainer
from fastreid.data.transforms import build_transforms

from ..data.letterbox import letterbox_transforms
from ..engine.loaders import dataset_items, make_dataset_test_loader, make_train_loader
from ..engine.pseudo_label_hook import unwrap_model
from ..registry import TRAINER_REGISTRY
from .feature_cache import ExpertCache, ensure_cache
from .meta_arch import MoEKDStudent, MoEKDTeacher

__all__ = ["MoEKDTrainer", "view_transform", "cache_dir", "attach_expert_cache"]

logger = logging.getLogger("fastreid." + __name__)


def view_transform(cfg, is_train: bool):
    """The config's transforms (letterboxed when ``MOEKD.PAD_TO_SQUARE``)."""
    return letterbox_transforms(cfg, is_train) if cfg.MOEKD.PAD_TO_SQUARE else build_transforms(cfg, is_train)


def cache_dir(cfg) -> str:
    return cfg.MOEKD.CACHE.DIR or os.path.join(cfg.OUTPUT_DIR, "expert_cache")


def _mixture_of(model):
    model = unwrap_model(model)
    if isinstance(model, MoEKDTeacher):
        return model, model.mixture
    if isinstance(model, MoEKDStudent) and model.teacher is not None:
        return model, model.teacher.module.mixture
    return model, None


def attach_expert_cache(cfg, model, *, splits=("train", "query", "gallery")) -> Optional[ExpertCache]:
    """Build / read the expert cache over the images of DATASETS.NAMES (train) and DATASETS.TESTS (query,
    gallery) and attach it to ``model``; None when caching is off or the model has no frozen experts."""
    model, mixture = _mixture_of(model)
    if mixture is None or not cfg.MOEKD.CACHE.ENABLED:
        return None
    items = []
    if "train" in splits:
        items += dataset_items(cfg.DATASETS.NAMES, "train", combineall=cfg.DATASETS.COMBINEALL)
    for split in ("query", "gallery"):
        if split in splits:
            items += dataset_items(cfg.DATASETS.TESTS, split)
    cache = ensure_cache(cfg, mixture, items, view_transform(cfg, is_train=False), directory=cache_dir(cfg))
    model.attach_cache(cache)
    return cache


@TRAINER_REGISTRY.register()
class MoEKDTrainer(DefaultTrainer):
    """DefaultTrainer + letterbox loaders + the expert cache (see the module docstring)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        attach_expert_cache(cfg, self.model)

    @classmethod
    def build_train_loader(cls, cfg):
        return make_train_loader(cfg, transform=view_transform(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return make_dataset_test_loader(cfg, dataset_name, transform=view_transform(cfg, is_train=False))
