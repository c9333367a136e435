"""``PseudoLabelTrainer``: unsupervised training on an unlabelled target dataset with clustering pseudo-labels."""
from __future__ import annotations

import logging
import os

from fastreid.data import build_reid_train_loader, samplers
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.transforms import build_transforms
from fastreid.engine import DefaultTrainer, hooks
from fastreid.solver import build_optimizer
from fastreid.utils import comm

from ..registry import TRAINER_REGISTRY
from .pseudo_label_hook import PseudoLabelHook, index_cameras

__all__ = ["PseudoLabelTrainer", "unlabelled_pool"]

# Placeholder identity of every target image until the first clustering (the real labels are never read).
UNLABELLED = "unlabelled"


def unlabelled_pool(cfg, *, show: bool = False) -> list[tuple[str, int]]:
    """(img_path, camid index) of every train image of ``DATASETS.NAMES`` under ``$FASTREID_DATASETS`` (default
    ``datasets``); identity labels are not read. Camids are numbered once over the pool (``index_cameras``), so
    every consumer of the pool (trainer, hook, evaluation-only merges) agrees on them. ``show``: print fast-reid's
    train-set summary."""
    root = os.getenv("FASTREID_DATASETS", "datasets")
    items = []
    for name in cfg.DATASETS.NAMES:
        data = DATASET_REGISTRY.get(name)(root=root)
        if show:
            data.show_train()
        items.extend((it[0], it[2]) for it in data.train)
    if not items:
        raise ValueError(f"DATASETS.NAMES {tuple(cfg.DATASETS.NAMES)} has no training images to pseudo-label")
    return index_cameras(items)


@TRAINER_REGISTRY.register()
class PseudoLabelTrainer(DefaultTrainer):
    """fast-reid's DefaultTrainer + :class:`PseudoLabelHook` (config: ``PLUGINS.PSEUDO_LABEL``).

    The train images of ``DATASETS.NAMES`` form the unlabelled pool. Until the first clustering (before the
    first epoch) the loader holds them under one placeholder identity with a plain TrainingSampler, so the
    initial classifier has one row; the hook replaces loader and classifier before any training step.
    """

    @classmethod
    def build_train_loader(cls, cfg):
        items = [(path, UNLABELLED, cam) for path, cam in unlabelled_pool(cfg, show=comm.is_main_process())]
        train_set = CommDataset(items, build_transforms(cfg, is_train=True), relabel=True)
        logging.getLogger(__name__).info(f"Unlabelled target pool: {len(items)} images")
        return build_reid_train_loader(cfg, train_set=train_set, sampler=samplers.TrainingSampler(len(items)))

    @classmethod
    def build_optimizer(cls, cfg, model):
        # Not ContiguousParams: its flat buffers have a fixed size, and the classifier changes shape.
        return build_optimizer(cfg, model, contiguous=False)

    def build_hooks(self):
        ret = super().build_hooks()
        at = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret))
        ret.insert(at, PseudoLabelHook.from_config(self.cfg))
        return ret
