"""``DeMoTrainer`` (TRAINER_REGISTRY): fast-reid's ``DefaultTrainer`` for ``DeMo``.

Overrides only what DeMo needs: the model type check, the multi-modal loaders (``plugins.engine.loaders``, the
batches carry ``modalities`` per ``PLUGINS.DATA``; identity sampler from ``DATALOADER.SAMPLER_TRAIN``), the
official optimizer groups and epoch schedule (``solver.py``) and the evaluator (``evaluation.py``: the protocol
of ``DEMO.TEST.PROTOCOL`` through the exact blockwise evaluator).
"""
from __future__ import annotations

import logging

from fastreid.engine import DefaultTrainer
from fastreid.modeling import build_model

from ..engine.loaders import make_train_loader
from ..engine.models import require_meta_arch
from ..registry import TRAINER_REGISTRY
from .evaluation import dataset_test_loader
from .meta_arch import DeMo
from .solver import build_demo_optimizer, build_demo_scheduler

__all__ = ["DeMoTrainer", "check_demo_cfg"]

logger = logging.getLogger("fastreid." + __name__)


def check_demo_cfg(cfg) -> None:
    """Fail fast on a config DeMo cannot train or evaluate with."""
    if cfg.MODEL.META_ARCHITECTURE != "DeMo":
        raise ValueError(f"DeMoTrainer trains MODEL.META_ARCHITECTURE DeMo, got {cfg.MODEL.META_ARCHITECTURE!r}")
    if len(cfg.PLUGINS.DATA.MODALITIES) != 3:
        raise ValueError(f"DeMo needs PLUGINS.DATA.MODALITIES [RGB, NI, TI], got {list(cfg.PLUGINS.DATA.MODALITIES)}")
    if cfg.TEST.FLIP.ENABLED:
        raise ValueError("TEST.FLIP.ENABLED flips batch['images'] only, not the modalities DeMo reads: turn it off")


@TRAINER_REGISTRY.register()
class DeMoTrainer(DefaultTrainer):
    """fast-reid's loop on DeMo (see the module docstring)."""

    def __init__(self, cfg):
        check_demo_cfg(cfg)
        super().__init__(cfg)
        self.warmup_iters = 0  # the epoch scheduler warms up; fast-reid's per-iteration warm-up stays off

    @classmethod
    def build_model(cls, cfg) -> DeMo:
        return require_meta_arch(build_model(cfg), DeMo, "DeMoTrainer")

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_demo_optimizer(cfg, model), None

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        return build_demo_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return make_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader, evaluator = dataset_test_loader(cfg, dataset_name)
        return loader, evaluator.num_query

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        return dataset_test_loader(cfg, dataset_name)
