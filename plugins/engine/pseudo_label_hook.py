"""Pseudo-labelling hook: re-cluster the unlabelled target set and retrain on the clusters (SpCL / SAGE stage 1).

Before the chosen epochs: extract L2-normalised features of every target image with the current model ->
sparse k-reciprocal Jaccard distance -> DBSCAN -> drop outliers -> new fast-reid train loader on the
pseudo-labels -> classifier re-initialised from the L2-normalised cluster centroids.

The hook is stateful (the labels of the last clustering, the classifier built on them, the eps that the rho
heuristic fixed at the first clustering), so it is one of the trainer's checkpointables: a resumed run trains on
the clusters it had when it stopped instead of re-clustering with the resumed model mid-period.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm
from fastreid.utils.params import ContiguousParams
from tabulate import tabulate
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..clustering import compute_jaccard_distance, dbscan_labels, rho_eps
from .loaders import make_pool_loader, make_train_loader

__all__ = ["ClusterResult", "PseudoLabelHook", "cluster_features", "extract_features", "index_cameras",
           "replace_classifier", "unwrap_model"]

logger = logging.getLogger("fastreid." + __name__)


@dataclass
class ClusterResult:
    """labels: (N,) int64, -1 = outlier; centroids: (C, D) float32 L2-normalised; eps used."""
    labels: np.ndarray
    centroids: np.ndarray
    eps: float

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def num_outliers(self) -> int:
        return int((self.labels < 0).sum())


def cluster_features(features: np.ndarray, *, k1: int, k2: int, eps: float | None, rho: float,
                     min_samples: int) -> ClusterResult:
    """Jaccard + DBSCAN on (N, D) L2-normalised features; ``eps=None`` computes the rho heuristic."""
    dist = compute_jaccard_distance(features, k1=k1, k2=k2)
    if eps is None:
        eps = rho_eps(dist, rho)
    labels = dbscan_labels(dist, eps=eps, min_samples=min_samples)
    num = int(labels.max()) + 1 if labels.size else 0
    if num == 0:
        raise RuntimeError(f"DBSCAN (eps={eps:.4f}, min_samples={min_samples}) found no cluster in "
                           f"{len(labels)} features: nothing to train on")
    keep = labels >= 0
    centroids = np.zeros((num, features.shape[1]), np.float64)
    np.add.at(centroids, labels[keep], features[keep].astype(np.float64))
    centroids /= np.bincount(labels[keep], minlength=num)[:, None]
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return ClusterResult(labels.astype(np.int64), centroids.astype(np.float32), float(eps))


def index_cameras(items: list[tuple[str, object]]) -> list[tuple[str, int]]:
    """(img_path, camid) pairs with every camid replaced by its index among the sorted distinct camids of
    ``items``. fast-reid prefixes train camids with the dataset name (strings); a camera-aware backbone (SIE) needs
    integers, and they must not change when clustering drops every image of some camera as an outlier."""
    distinct = {c for _, c in items}
    try:
        ordered = sorted(distinct)  # numbers numerically, strings alphabetically
    except TypeError:  # mixed types
        ordered = sorted(distinct, key=str)
    cams = {c: i for i, c in enumerate(ordered)}
    return [(p, cams[c]) for p, c in items]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def extract_features(cfg, model: torch.nn.Module, items: list[tuple[str, object]], *, batch_size: int,
                     desc: str = "pseudo-label features") -> np.ndarray | None:
    """(N, D) float32 L2-normalised eval features of ``items`` ((img_path, camid) pairs) with the test transforms.

    Under torch.distributed every rank extracts its InferenceSampler shard and rank 0 returns all N rows
    (other ranks return None). The model's train/eval mode is restored afterwards.
    """
    loader = make_pool_loader(cfg, items, batch_size=batch_size)
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    feats = []
    try:
        for batch in tqdm(loader, desc=desc, disable=not comm.is_main_process(), leave=False):
            feats.append(F.normalize(net(batch).float(), dim=1).cpu())
    finally:
        net.train(was_training)
    local = torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)
    if comm.get_world_size() == 1:
        return local
    shards = comm.gather(local, dst=0)  # InferenceSampler: contiguous shards in rank order
    return np.concatenate([s for s in shards if s.size], 0) if comm.is_main_process() else None


def replace_classifier(model: torch.nn.Module, optimizer: torch.optim.Optimizer, centroids: torch.Tensor, *,
                       frozen: bool) -> torch.nn.Parameter:
    """Swap ``model.heads.weight`` (C_old, D) for a new Parameter (C, D) = ``centroids``; keep the optimizer right.

    The new parameter takes the old one's place in its optimizer param group (same lr / weight decay) and the
    old one's optimizer state (momentum, Adam moments) is dropped: its shape no longer matches.
    """
    head = unwrap_model(model).heads
    old = head.weight
    if not isinstance(old, torch.nn.Parameter) or old.dim() != 2:
        raise TypeError(f"{type(head).__name__}.weight must be a (num_classes, dim) Parameter to be replaced")
    if centroids.shape[1] != old.shape[1]:
        raise ValueError(f"centroid dim {centroids.shape[1]} != classifier dim {old.shape[1]} of "
                         f"{type(head).__name__}: the extracted features are not the classifier's input")
    new = torch.nn.Parameter(centroids.to(device=old.device, dtype=old.dtype).clone(), requires_grad=not frozen)
    group = next((g for g in optimizer.param_groups if any(p is old for p in g["params"])), None)
    if group is None:
        raise RuntimeError("the classifier weight is not in the optimizer: build the optimizer with it "
                           "(and without ContiguousParams) so that it can be replaced")
    group["params"] = [new if p is old else p for p in group["params"]]
    optimizer.state.pop(old, None)
    head.weight = new
    num_classes = new.shape[0]
    for mod in (head, getattr(head, "cls_layer", None)):
        if mod is not None and hasattr(mod, "num_classes"):
            mod.num_classes = num_classes
    return new


class PseudoLabelHook(HookBase):
    """Re-cluster the target training set before every ``period``-th epoch (epoch 0 included).

    Under torch.distributed every rank extracts its InferenceSampler shard, rank 0 clusters the gathered
    features and every rank receives the same labels and centroids. The number of iterations per epoch stays
    the trainer's (fast-reid's train samplers are infinite), as in SpCL.
    """

    def __init__(self, cfg, *, k1: int, k2: int, eps_mode: str, eps: float, rho: float, min_samples: int,
                 period: int, classifier_frozen: bool, feature_batch: int):
        if eps_mode not in ("fixed", "rho"):
            raise ValueError(f"PLUGINS.PSEUDO_LABEL.EPS_MODE must be 'fixed' or 'rho', got {eps_mode!r}")
        if period < 1:
            raise ValueError(f"PLUGINS.PSEUDO_LABEL.PERIOD must be >= 1 epoch, got {period}")
        if eps_mode == "fixed" and not 0 < eps < 1:
            raise ValueError(f"PLUGINS.PSEUDO_LABEL.EPS must be in (0, 1), got {eps}")
        self.cfg = cfg
        self.k1, self.k2, self.rho, self.min_samples = int(k1), int(k2), float(rho), int(min_samples)
        self.eps_mode, self.period, self.frozen = eps_mode, int(period), bool(classifier_frozen)
        self.eps = float(eps) if eps_mode == "fixed" else None  # rho: set at the first clustering, then reused
        self.feature_batch = int(feature_batch) or int(cfg.TEST.IMS_PER_BATCH)
        self.items: list[tuple[str, object]] | None = None  # (img_path, camid) of the unlabelled target set
        self.last: ClusterResult | None = None
        self.pseudo_items: list[tuple[str, int, object]] = []
        self._clustered_once = False
        self._last_epoch = -1

    @classmethod
    def from_config(cls, cfg) -> "PseudoLabelHook":
        p = cfg.PLUGINS.PSEUDO_LABEL
        return cls(cfg, k1=p.K1, k2=p.K2, eps_mode=p.EPS_MODE, eps=p.EPS, rho=p.RHO, min_samples=p.MIN_SAMPLES,
                   period=p.PERIOD, classifier_frozen=p.CLASSIFIER_FROZEN, feature_batch=p.FEATURE_BATCH)

    def before_train(self):
        if self.items is None:  # (already set when the state was restored from a checkpoint)
            self.items = self._pool_items()

    def _pool_items(self) -> list[tuple[str, object]]:
        # The initial loader's items are the unlabelled pool; their pids are never read again.
        return [(it[0], it[2]) for it in self.trainer.data_loader.dataset.img_items]

    # --- checkpointable (fast-reid's Checkpointer saves / loads it with the model) ---------------------------------

    def state_dict(self) -> dict:
        """The last clustering: labels (N,) over the pool, centroids (C, D), eps, the classifier (C, D) trained on
        it and the epoch it was made for; {} before the first clustering. Tensors and numbers only, so the
        checkpoint still loads with ``torch.load(weights_only=True)``."""
        if self.last is None:
            return {}
        return {"labels": torch.from_numpy(self.last.labels), "centroids": torch.from_numpy(self.last.centroids),
                "eps": float(self.last.eps), "epoch": int(self._last_epoch),
                "classifier": unwrap_model(self.trainer._trainer.model).heads.weight.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the clustering of a checkpoint: the train loader on its pseudo-labels and the classifier it had.

        Called by the Checkpointer before the optimizer state is loaded (``PseudoLabelTrainer`` puts the hook
        first), so the classifier the optimizer's momentum refers to already has the checkpoint's shape."""
        if not state:
            return
        self.items = self._pool_items()
        labels = state["labels"].numpy().astype(np.int64)
        if labels.shape != (len(self.items),):
            raise ValueError(f"the checkpoint's pseudo-labels cover {labels.shape[0]} images but the unlabelled pool "
                             f"of DATASETS.NAMES {tuple(self.cfg.DATASETS.NAMES)} has {len(self.items)}: the target "
                             f"set changed since the checkpoint was written (delete OUTPUT_DIR's checkpoints to restart)")
        self.last = ClusterResult(labels, state["centroids"].numpy().astype(np.float32), float(state["eps"]))
        if self.eps_mode == "rho":
            self.eps = self.last.eps  # fixed at the first clustering and reused, as in the uninterrupted run
        self._last_epoch = int(state["epoch"])
        self.pseudo_items = [(p, int(lab), c) for (p, c), lab in zip(self.items, labels) if lab >= 0]
        self._swap_loader()
        self._swap_classifier(state["classifier"])
        self._clustered_once = True
        logger.info(f"Pseudo-labels restored from the checkpoint: clustering of epoch {self._last_epoch}, "
                    f"{self.last.num_clusters} clusters, {self.last.num_outliers} outliers, eps {self.last.eps:.4f}")

    def before_epoch(self):
        epoch = self.trainer.epoch
        if epoch % self.period == 0 or not self._clustered_once:
            self.update(epoch)

    def extract_features(self, model: torch.nn.Module) -> np.ndarray:
        """(N, D) float32 L2-normalised features of ``self.items`` (all of them on rank 0, None elsewhere)."""
        return extract_features(self.cfg, model, self.items, batch_size=self.feature_batch)

    def update(self, epoch: int) -> ClusterResult:
        """Re-cluster, swap the train loader and the classifier; returns the clustering (same on every rank)."""
        trainer = self.trainer
        t0 = time.perf_counter()
        feats = self.extract_features(trainer.model)
        t1 = time.perf_counter()
        result = None
        if comm.is_main_process():
            if feats.shape[0] != len(self.items):
                raise RuntimeError(f"extracted {feats.shape[0]} features for {len(self.items)} images")
            result = cluster_features(feats, k1=self.k1, k2=self.k2, eps=self.eps, rho=self.rho,
                                      min_samples=self.min_samples)
        if comm.get_world_size() > 1:
            result = comm.all_gather(result)[0]  # rank 0's result on every rank
        t2 = time.perf_counter()
        self.eps = result.eps
        self.last = result
        self.pseudo_items = [(p, int(lab), c) for (p, c), lab in zip(self.items, result.labels) if lab >= 0]
        if comm.is_main_process():
            table = tabulate([[epoch, len(self.items), result.num_clusters, result.num_outliers,
                               f"{result.eps:.4f}", f"{t1 - t0:.2f}", f"{t2 - t1:.2f}"]],
                             headers=["epoch", "images", "clusters", "outliers", "eps", "extract s", "cluster s"],
                             tablefmt="pipe")
            logger.info("Pseudo-labels:\n" + table)
        self._swap_loader()
        self._swap_classifier(torch.from_numpy(result.centroids))
        self._clustered_once = True
        self._last_epoch = int(epoch)
        if comm.is_main_process():
            logger.info(f"Pseudo-labels: train loader ({len(self.pseudo_items)} images) and classifier "
                        f"({result.num_clusters} rows, frozen={self.frozen}) rebuilt in "
                        f"{time.perf_counter() - t2:.2f} s")
        storage = getattr(trainer, "storage", None)
        if storage is not None:
            storage.put_scalars(pseudo_clusters=result.num_clusters, pseudo_outliers=result.num_outliers,
                                smoothing_hint=False)
        return result

    def _swap_loader(self):
        inner = self.trainer._trainer  # SimpleTrainer / AMPTrainer: owns data_loader and its iterator
        sampler = self.cfg.DATALOADER.SAMPLER_TRAIN
        if sampler in ("NaiveIdentitySampler", "BalancedIdentitySampler", "SetReWeightSampler"):
            # fast-reid's P x K samplers loop forever (yielding nothing) when there are fewer than P identities.
            p = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size() // self.cfg.DATALOADER.NUM_INSTANCE
            num = self.last.num_clusters
            if num < p:
                raise RuntimeError(f"{num} pseudo-identities < {p} identities per batch that {sampler} needs "
                                   f"(SOLVER.IMS_PER_BATCH / world size / DATALOADER.NUM_INSTANCE): lower the batch "
                                   f"size, raise NUM_INSTANCE or change PLUGINS.PSEUDO_LABEL.EPS / EPS_MODE")
        # relabel=False: cluster labels are already 0..C-1 (DBSCAN keeps no empty cluster) and camids are the
        # pool-wide indices; relabelling would renumber the cameras whenever one of them is all outliers.
        loader = make_train_loader(self.cfg, self.pseudo_items, relabel=False)
        old_iter, old_loader = inner._data_loader_iter, inner.data_loader
        inner.data_loader = loader
        inner._data_loader_iter = iter(loader)
        if hasattr(old_iter, "_shutdown_workers"):  # torch DataLoader iterator with worker processes
            old_iter._shutdown_workers()
        elif hasattr(old_loader, "shutdown") and hasattr(old_loader, "iter"):  # fast-reid DataLoaderX
            old_loader.shutdown()

    def _swap_classifier(self, centroids: torch.Tensor):
        inner = self.trainer._trainer
        if isinstance(inner.param_wrapper, ContiguousParams):
            raise RuntimeError("the optimizer was built with ContiguousParams (flat buffers of fixed size): the "
                               "classifier cannot change shape; build it with contiguous=False")
        model = inner.model
        replace_classifier(model, inner.optimizer, centroids, frozen=self.frozen)
        if isinstance(model, DistributedDataParallel):
            # DDP's reducer registered the old parameter set: wrap the updated module again.
            import fastreid.engine.defaults as defaults  # its DistributedDataParallel is host-patched on CPU

            inner.model = defaults.DistributedDataParallel(model.module, device_ids=[comm.get_local_rank()],
                                                           broadcast_buffers=False)
