"""The LoRAHub baseline on the unlabelled target: K layer-shared expert coefficients fitted on pseudo-labels.

Pseudo-labels come from clustering the target pool with the starting model (c = 1/K, i.e. LoRA-Avg), with the
same Jaccard + DBSCAN settings as the other stages (``PLUGINS.PSEUDO_LABEL``). The objective, on a fixed batch
of pseudo-labelled images, is the cross-entropy of each eval feature against the L2-normalised centroids of the
batch's pseudo-identities recomputed from the current features (cosine logits / temperature), plus LoRAHub's L1
penalty; it is minimised by CMA-ES (paper) or Adam. Centroids fixed at the starting model would make that model
the objective's optimum by construction; recomputed ones score how compact and separated the clusters are.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fastreid.utils import comm
from torch import nn

from ..engine.loaders import pool_batch
from ..engine.pseudo_label_hook import cluster_features, extract_features
from ..tuners.expert_bank import lora_factors
from ..tuners.lorahub import attach_lorahub, fit_lorahub_cma, fit_lorahub_gradient, fold_lorahub
from .builders import build_merged_base, vit_of

__all__ = ["objective_indices", "centroid_objective", "fit_lorahub_model"]

logger = logging.getLogger("fastreid." + __name__)


def objective_indices(labels: np.ndarray, num_images: int, seed: int = 0) -> np.ndarray:
    """Up to ``num_images`` pseudo-labelled indices, taken round-robin over the clusters (outliers, label -1,
    excluded) so that every cluster is represented before any gets a second image."""
    rng = np.random.default_rng(seed)
    per_cluster = [rng.permutation(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)]
    order = []
    depth = 0
    while len(order) < num_images and any(depth < len(m) for m in per_cluster):
        order.extend(int(m[depth]) for m in per_cluster if depth < len(m))
        depth += 1
    return np.asarray(order[:num_images], np.int64)


def centroid_objective(model: nn.Module, batch: dict, targets: torch.Tensor, temperature: float
                       ) -> Callable[[], torch.Tensor]:
    """``loss_fn()`` of the fit: cross-entropy of each feature of ``batch`` (M images) against the L2-normalised
    mean features of the M images' pseudo-identities ``targets`` (M,) in 0..C-1, cosine logits / temperature.

    fast-reid's ``preprocess_image`` normalises ``batch["images"]`` in place, so every call gets a fresh copy
    (otherwise the second evaluation would see images normalised twice).
    """
    images = batch["images"]
    onehot = F.one_hot(targets).float()  # (M, C) membership in the batch's pseudo-identities

    def loss_fn() -> torch.Tensor:
        f = F.normalize(model({**batch, "images": images.clone()}).float(), dim=1)  # (M, D)
        centroids = F.normalize(onehot.T.to(f) @ f, dim=1)                           # (C, D)
        return F.cross_entropy(f @ centroids.T / temperature, targets.to(f.device))

    return loss_fn


def fit_lorahub_model(cfg, source_weights: Sequence[str], expert_dirs: Sequence[str], *,
                      items: List[tuple]) -> tuple[nn.Module, List[float]]:
    """Build the merged base, attach LoRAHub, fit the coefficients on target pseudo-labels, fold them into the
    weights; ``items`` is the target pool (``plugins.engine.pseudo_label_trainer.unlabelled_pool``).
    Returns (model with plain linears, the K coefficients). Under torch.distributed, features are
    extracted by all ranks, rank 0 clusters and fits, and every rank receives its coefficients."""
    model, experts = build_merged_base(cfg, source_weights, expert_dirs)
    vit = vit_of(model)
    factors = [lora_factors(e) for e in experts]
    coefficients = attach_lorahub(vit, {name: [f[name] for f in factors] for name in factors[0]})
    model.eval()
    p, hub = cfg.PLUGINS.PSEUDO_LABEL, cfg.SAGE.LORAHUB
    feats = extract_features(cfg, model, items, batch_size=int(p.FEATURE_BATCH) or int(cfg.TEST.IMS_PER_BATCH),
                             desc="LoRAHub pseudo-label features")
    values = None
    if comm.is_main_process():
        clusters = cluster_features(feats, k1=p.K1, k2=p.K2, eps=float(p.EPS) if p.EPS_MODE == "fixed" else None,
                                    rho=p.RHO, min_samples=p.MIN_SAMPLES)
        idx = objective_indices(clusters.labels, int(hub.NUM_IMAGES))
        batch = pool_batch(cfg, [items[i] for i in idx])
        _, targets = np.unique(clusters.labels[idx], return_inverse=True)
        loss_fn = centroid_objective(model, batch, torch.as_tensor(targets), float(hub.TEMPERATURE))

        logger.info(f"LoRAHub: {clusters.num_clusters} pseudo-identities, objective on {len(idx)} images, "
                    f"{hub.OPTIMIZER} with budget {hub.BUDGET}")
        with torch.no_grad():
            start = float(loss_fn()) + float(coefficients.weight.abs().mean()) * float(hub.L1)
        if hub.OPTIMIZER == "cma":
            best = fit_lorahub_cma(coefficients, loss_fn, budget=int(hub.BUDGET), l1=float(hub.L1))
        elif hub.OPTIMIZER == "gradient":
            best = fit_lorahub_gradient(coefficients, loss_fn, steps=int(hub.BUDGET), l1=float(hub.L1))[-1]
        else:
            raise ValueError(f"SAGE.LORAHUB.OPTIMIZER must be 'cma' or 'gradient', got {hub.OPTIMIZER!r}")
        values = coefficients.weight.detach().cpu().tolist()
        logger.info(f"LoRAHub coefficients {[round(v, 4) for v in values]}: objective {best:.4f} (LoRA-Avg start "
                    f"{start:.4f}{'; nothing better found, LoRA-Avg kept' if best >= start else ''})")
    if comm.get_world_size() > 1:
        values = comm.all_gather(values)[0]
    with torch.no_grad():
        coefficients.weight.copy_(torch.as_tensor(values, dtype=coefficients.weight.dtype))
    fold_lorahub(vit)
    return model, [float(v) for v in values]
