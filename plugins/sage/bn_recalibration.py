"""Re-estimate a merged model's BatchNorm statistics (the BNNeck) on the unlabelled target images.

Why: stage-2 gate training runs the merged model in train mode for an epoch, so the BNNeck statistics of SAGE
and MoLE follow the target features of the merged model. The training-free baselines (LoRA-Avg, TA, TIES, DARE,
KnOTS, TSV-M, LoRAHub) would otherwise keep the experts' mean statistics, measured on other features; on the demo
data that alone costs LoRA-Avg about 6 mAP. Re-estimating them (AdaBN-style, source-free: target images only,
no labels) compares the merges on equal terms. ``SAGE.MERGE.RECALIBRATE_BN`` turns it off.
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import List, Tuple

import numpy as np
import torch
from fastreid.utils import comm
from torch import nn
from tqdm import tqdm

from ..engine.loaders import make_pool_epoch_loader

__all__ = ["recalibrate_batchnorm"]

logger = logging.getLogger("fastreid." + __name__)


def _batchnorms(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed python, numpy and torch (CPU) inside the block; restore their previous states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _accumulate(cfg, model: nn.Module, norms, items, *, epochs: int, batch_size: int) -> None:
    """Reset ``norms`` and average their batch statistics over ``epochs`` passes of ``items`` in train mode."""
    loader = make_pool_epoch_loader(cfg, items, batch_size=batch_size, relabel=True)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    uses_camids = getattr(model.backbone, "uses_camids", False)
    try:
        for _ in range(epochs):
            for batch in tqdm(loader, desc="BN re-estimation", leave=False):
                images = model.preprocess_image(batch)
                if uses_camids:
                    feats = model.backbone(images, camids=batch["camids"].to(images.device))
                else:
                    feats = model.backbone(images)
                model.heads(feats)  # the BNNeck sees the features in train mode: its statistics update
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


@torch.no_grad()
def recalibrate_batchnorm(cfg, model: nn.Module, items: List[Tuple[str, object]], *, epochs: int = 1,
                          batch_size: int = 0, seed: int = 0) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over ``epochs``
    passes of the target images ``items`` ((img_path, camid) pairs) with the training transforms (the
    statistics a train-mode epoch would see). Other parameters are untouched; the model is left in eval mode.
    Batch order and augmentations are drawn from ``seed`` (the global RNG states are restored afterwards), so
    re-measuring a merge gives the same statistics. Under torch.distributed rank 0 computes them and every rank
    receives rank 0's values.

    Returns:
        The number of BatchNorm layers re-estimated (0: nothing to do).
    """
    norms = _batchnorms(model)
    if not norms:
        return 0
    if comm.is_main_process():
        with _seeded(seed):
            _accumulate(cfg, model, norms, items, epochs=epochs, batch_size=batch_size)
    if comm.get_world_size() > 1:
        stats = [(m.running_mean.cpu(), m.running_var.cpu(), m.num_batches_tracked.cpu()) for m in norms] \
            if comm.is_main_process() else None
        stats = comm.all_gather(stats)[0]
        for m, (mean, var, count) in zip(norms, stats):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
    model.eval()
    return len(norms)
