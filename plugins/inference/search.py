"""Top-k search of a gallery: exact (blockwise, the evaluator's distances and tie order), faiss, re-ranked.

Distances are those of ``plugins.evaluation.evaluate_features``: ``cosine`` = 1 - cos of L2-normalised features,
``euclidean`` = squared distance; ascending, ties broken by gallery index (stable sort), queries in blocks of
``plugins.evaluation.default_block_size`` rows so memory stays O(block x G). ``exclude_same_camera`` applies the
evaluation protocol's removal (gallery items with the query's id and camera) for a dataset's own query set.

faiss: ``flat`` (exact: IndexFlatIP on normalised features / IndexFlatL2) by default; ``ivf`` and ``hnsw`` are
approximate, and ``recall_at_k`` measures them against the exact result on the same data.

Re-ranking: k-reciprocal (Zhong et al., CVPR 2017) with the project's sparse exact Jaccard distance
(``plugins.clustering.compute_jaccard_distance``) over query + gallery, mixed as fast-reid's evaluator mixes it:
``jaccard * (1 - lambda) + original * lambda``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..clustering import compute_jaccard_distance
from ..evaluation import default_block_size

__all__ = ["Ranking", "METRICS", "FAISS_KINDS", "distance_block", "exact_topk", "faiss_topk", "recall_at_k",
           "rerank_distances", "topk_from_distances"]

METRICS = ("cosine", "euclidean")
FAISS_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class Ranking:
    """``indices`` (Q, k) int64 gallery rows, best first; ``distances`` (Q, k) float32 (ascending; ``inf`` pads
    rows with fewer than k candidates, index -1 there); ``metric``: what the distances are."""
    indices: np.ndarray
    distances: np.ndarray
    metric: str

    @property
    def scores(self) -> np.ndarray:
        """Cosine similarity for ``cosine`` (1 - distance); the squared distance itself for ``euclidean``."""
        return 1.0 - self.distances if self.metric == "cosine" else self.distances


def _check(metric: str, q: torch.Tensor, g: torch.Tensor) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if q.dim() != 2 or g.dim() != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected (Q, D) and (G, D) features, got {tuple(q.shape)} and {tuple(g.shape)}")


def _prepare(q, g, metric: str, device=None):
    q = torch.as_tensor(q)
    g = torch.as_tensor(g)
    _check(metric, q, g)
    dev = torch.device(device) if device is not None else q.device
    q, g = q.to(dev, torch.float32), g.to(dev, torch.float32)
    if metric == "cosine":
        q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    return q, g


def distance_block(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """(b, G) distances of prepared (normalised for cosine) features, the evaluator's formulas and op order."""
    if metric == "cosine":
        return torch.mm(q, g.t()).neg_().add_(1)
    d = q.pow(2).sum(dim=1, keepdim=True) + g.pow(2).sum(dim=1, keepdim=True).t()
    return d.addmm_(q, g.t(), beta=1, alpha=-2)


def _exclusion(q_pids, g_pids, q_camids, g_camids):
    if q_pids is None:
        return None
    args = [np.asarray(x, dtype=np.int64) for x in (q_pids, g_pids, q_camids, g_camids)]
    return [torch.from_numpy(a) for a in args]


def topk_from_distances(dist: torch.Tensor, k: int, metric: str, removed: Optional[torch.Tensor] = None
                        ) -> Ranking:
    """Top-k of dense (Q, G) distances (stable ascending sort); ``removed`` (Q, G) bool rows are dropped."""
    dist = dist.float().clone()
    if removed is not None:
        dist[removed] = float("inf")
    k = min(int(k), dist.shape[1])
    vals, idx = torch.sort(dist, dim=1, stable=True)
    vals, idx = vals[:, :k], idx[:, :k].clone()
    idx[torch.isinf(vals)] = -1
    return Ranking(idx.cpu().numpy().astype(np.int64), vals.cpu().numpy().astype(np.float32), metric)


@torch.no_grad()
def exact_topk(q_feats, g_feats, k: int = 10, *, metric: str = "cosine", q_pids=None, g_pids=None, q_camids=None,
               g_camids=None, block_size: Optional[int] = None, device=None) -> Ranking:
    """Exact top-k of each query (Q, D) in the gallery (G, D), blockwise over queries. With ids and cameras of
    both sides, gallery items with the query's id and camera are removed (the market protocol)."""
    q, g = _prepare(q_feats, g_feats, metric, device)
    excl = _exclusion(q_pids, g_pids, q_camids, g_camids)
    block = block_size or default_block_size(g.shape[0])
    parts = []
    for start in range(0, q.shape[0], block):
        stop = min(start + block, q.shape[0])
        removed = None
        if excl is not None:
            qp, gp, qc, gc = excl
            removed = ((qp[start:stop, None] == gp[None]) & (qc[start:stop, None] == gc[None])).to(q.device)
        parts.append(topk_from_distances(distance_block(q[start:stop], g, metric), k, metric, removed))
    if not parts:
        return Ranking(np.zeros((0, min(k, g.shape[0])), np.int64), np.zeros((0, min(k, g.shape[0])), np.float32),
                       metric)
    return Ranking(np.concatenate([p.indices for p in parts]), np.concatenate([p.distances for p in parts]), metric)


def _faiss_index(kind: str, dim: int, metric: str, num: int, nlist: int, hnsw_m: int):
    import faiss

    inner = metric == "cosine"
    space = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
    if kind == "flat":
        return faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
        return faiss.IndexIVFFlat(quantizer, dim, max(1, min(nlist, num)), space)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, hnsw_m, space)
    raise ValueError(f"faiss index kind must be one of {FAISS_KINDS}, got {kind!r}")


def faiss_topk(q_feats, g_feats, k: int = 10, *, metric: str = "cosine", kind: str = "flat", nlist: int = 0,
               nprobe: int = 8, hnsw_m: int = 32, ef_search: int = 64) -> Ranking:
    """Top-k with a faiss index over the gallery. ``flat`` is exact; ``ivf`` (``nlist`` lists, default
    ~4 sqrt(G), ``nprobe`` searched) and ``hnsw`` (``hnsw_m`` links, ``ef_search``) are approximate.
    Distances are returned in this module's convention (cosine: 1 - inner product)."""
    q, g = _prepare(q_feats, g_feats, metric, "cpu")
    qn, gn = np.ascontiguousarray(q.numpy()), np.ascontiguousarray(g.numpy())
    nlist = nlist or max(1, int(4 * np.sqrt(gn.shape[0])))
    index = _faiss_index(kind, gn.shape[1], metric, gn.shape[0], nlist, hnsw_m)
    if kind == "ivf":
        index.train(gn)
        index.nprobe = min(nprobe, index.nlist)
    if kind == "hnsw":
        index.hnsw.efSearch = max(ef_search, k)
    index.add(gn)
    k = min(int(k), gn.shape[0])
    vals, idx = index.search(qn, k)
    dist = (1.0 - vals) if metric == "cosine" else vals
    dist = np.where(idx < 0, np.inf, dist).astype(np.float32)
    return Ranking(idx.astype(np.int64), dist, metric)


def recall_at_k(approx: Ranking, exact: Ranking) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (1.0: the approximate index lost nothing)."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum())
            for a, e in zip(approx.indices, exact.indices)]
    return float(np.mean(hits)) if hits else 1.0


@torch.no_grad()
def rerank_distances(q_feats, g_feats, *, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                     metric: str = "cosine") -> torch.Tensor:
    """(Q, G) k-reciprocal re-ranked distances: ``jaccard * (1 - lambda) + original * lambda``, the Jaccard part
    from ``compute_jaccard_distance`` over the Q + G features (sparse; pairs not stored are at distance 1).
    Needs Q + G >= k1 (fast-reid's defaults: k1 20, k2 6, lambda 0.3)."""
    q, g = _prepare(q_feats, g_feats, metric, "cpu")
    nq = q.shape[0]
    jac = compute_jaccard_distance(torch.cat([q, g]), k1=k1, k2=k2, search_option=3)
    sub = jac[:nq, nq:].tocoo()
    dense = np.ones((nq, g.shape[0]), np.float32)
    dense[sub.row, sub.col] = sub.data
    return torch.from_numpy(dense) * (1 - lambda_value) + distance_block(q, g, metric) * lambda_value

