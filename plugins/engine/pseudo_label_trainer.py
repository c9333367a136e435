"""``PseudoLabelTrainer``: unsupervised training on an unlabelled target dataset with clustering pseudo-labels."""
from __future__ import annotations

import logging

from fastreid.data import samplers
from fastreid.engine import DefaultTrainer, hooks
from fastreid.solver import build_optimizer
from fastreid.utils import comm

from ..registry import TRAINER_REGISTRY
from .loaders import dataset_items, make_train_loader
from .pseudo_label_hook import PseudoLabelHook, index_cameras

__all__ = ["PseudoLabelTrainer", "unlabelled_pool"]

# Placeholder identity of every target image until the first clustering (the real labels are never read).
UNLABELLED = "unlabelled"


def unlabelled_pool(cfg, *, show: bool = False) -> list[tuple[str, int]]:
    """(img_path, camid index) of every train image of ``DATASETS.NAMES`` under ``$FASTREID_DATASETS`` (default
    ``datasets``); identity labels are not read. Camids are numbered once over the pool (``index_cameras``), so
    every consumer of the pool (trainer, hook, evaluation-only merges) agrees on them. ``show``: print fast-reid's
    train-set summary."""
    items = [(it[0], it[2]) for it in dataset_items(cfg.DATASETS.NAMES, "train", show=show)]
    if not items:
        raise ValueError(f"DATASETS.NAMES {tuple(cfg.DATASETS.NAMES)} has no training images to pseudo-label")
    return index_cameras(items)


@TRAINER_REGISTRY.register()
class PseudoLabelTrainer(DefaultTrainer):
    """fast-reid's DefaultTrainer + :class:`PseudoLabelHook` (config: ``PLUGINS.PSEUDO_LABEL``), whose clustering
    state is saved in every checkpoint and restored on resume.

    The train images of ``DATASETS.NAMES`` form the unlabelled pool. Until the first clustering (before the
    first epoch) the loader holds them under one placeholder identity with a plain TrainingSampler, so the
    initial classifier has one row; the hook replaces loader and classifier before any training step.
    """

    @classmethod
    def build_train_loader(cls, cfg):
        items = [(path, UNLABELLED, cam) for path, cam in unlabelled_pool(cfg, show=comm.is_main_process())]
        logging.getLogger(__name__).info(f"Unlabelled target pool: {len(items)} images")
        return make_train_loader(cfg, items, sampler=samplers.TrainingSampler(len(items)))

    @classmethod
    def build_optimizer(cls, cfg, model):
        # Not ContiguousParams: its flat buffers have a fixed size, and the classifier changes shape.
        return build_optimizer(cfg, model, contiguous=False)

    def build_hooks(self):
        ret = super().build_hooks()
        at = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret))
        hook = PseudoLabelHook.from_config(self.cfg)
        ret.insert(at, hook)
        # Checkpointed first: loading it resizes the classifier before the optimizer state (which refers to the
        # classifier's (C, D) momentum) is loaded.
        self.checkpointer.checkpointables = {"pseudo_labels": hook, **self.checkpointer.checkpointables}
        return ret
