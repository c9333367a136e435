"""Blockwise exact retrieval evaluation: features in (or a dense matrix in), metrics out, no (Q, G) matrix.

Queries are processed in blocks of ``block_size`` rows: distances of the block to the whole gallery (torch,
CPU or GPU), exact match ranks (``ranking.rank_matches``), then CMC/AP/INP. Peak memory is the gallery
features plus O(block_size x G). Results equal fast-reid's compiled ranking run with a stable argsort (ties
by gallery index): CMC exactly, AP/INP up to float32 rounding of the compiled code (we use float64).

Every block has the same number of rows (the last one overlaps the previous), because BLAS may round a
row differently when a product has very few rows; so the distances are bit-identical to fast-reid's dense
``build_dist`` on CPU and the ranking sees exactly the numbers the reference sees.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .cmc import Cuhk03Cmc, MarketCmc
from .protocols import SameIdIndex, get_protocol, to_torch_lookup
from .ranking import rank_matches

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
_BLOCK_BYTES = 1 << 27          # ~128 MB for one block of float32 distances + its candidate mask
_MAX_CANDIDATES = 1 << 21       # candidates keyed at once (~100 MB of int64 work arrays at most)


@dataclass
class RankResult:
    """Metrics of one evaluation. ``all_AP``/``all_INP``: (num_valid,) float64 in query order."""
    cmc: np.ndarray                 # (max_rank,) float32, fast-reid's compiled CMC
    all_AP: np.ndarray
    all_INP: np.ndarray
    valid_query: np.ndarray         # (num_valid,) indices of the queries that have a valid match
    num_query: int

    @property
    def num_skipped(self) -> int:
        """Queries without any valid match in the gallery (skipped, as fast-reid does)."""
        return self.num_query - self.valid_query.size

    @property
    def mAP(self) -> float:
        return float(np.mean(self.all_AP))

    @property
    def mINP(self) -> float:
        return float(np.mean(self.all_INP))

    def fastreid_results(self) -> OrderedDict:
        """The dict ``ReidEvaluator.evaluate`` reports (percent): Rank-1/5/10, mAP, mINP, metric."""
        out = OrderedDict()
        for r in (1, 5, 10):
            if r <= self.cmc.size:
                out[f"Rank-{r}"] = self.cmc[r - 1] * 100
        out["mAP"] = self.mAP * 100
        out["mINP"] = self.mINP * 100
        out["metric"] = (self.mAP + self.cmc[0]) / 2 * 100
        return out

    def retrieval_results(self) -> OrderedDict:
        """Text-to-image style report (percent): R@1/5/10, mAP, mINP."""
        out = OrderedDict((f"R{r}", float(self.cmc[r - 1]) * 100) for r in (1, 5, 10) if r <= self.cmc.size)
        out["mAP"] = self.mAP * 100
        out["mINP"] = self.mINP * 100
        return out


def default_block_size(num_gallery: int) -> int:
    """Rows per block so that one block's distances and mask stay near 128 MB (8 to 1024 rows)."""
    return int(min(1024, max(8, (_BLOCK_BYTES // (5 * max(1, num_gallery))) // 8 * 8)))


def _as_int_array(x, name: str, n: int) -> np.ndarray:
    if x is None:
        raise ValueError(f"{name} is None, but this protocol removes same-camera (same-scene) matches: "
                         "camids are required")
    if isinstance(x, torch.Tensor):
        x = x.cpu().numpy()
    arr = np.asarray(x).astype(np.int64, copy=False).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries, expected {n}")
    return arr


def _run(dist_rows: Callable[[np.ndarray], torch.Tensor], num_q: int, num_g: int, q_pids, g_pids,
         q_camids, g_camids, protocol: str, max_rank: int, block_size: int | None,
         progress: bool, constant_height: bool) -> RankResult:
    """Shared driver. ``dist_rows(query_indices)`` returns a fresh (b, G) float32 tensor of distances;
    ``constant_height``: pad products to a constant row count (features in, see ``_block_rows``)."""
    proto = get_protocol(protocol)
    q_pids = _as_int_array(q_pids, "q_pids", num_q)
    g_pids = _as_int_array(g_pids, "g_pids", num_g)
    use_cams = proto.remove_same_camera
    q_camids = _as_int_array(q_camids, "q_camids", num_q) if use_cams else None
    g_camids = _as_int_array(g_camids, "g_camids", num_g) if use_cams else None
    if num_g < max_rank:
        logger.info("Note: number of gallery samples is quite small, got %d", num_g)
        max_rank = num_g

    index = SameIdIndex(g_pids, g_camids)
    valid_query = np.flatnonzero(index.valid_counts(q_pids, q_camids, use_cams) > 0)
    block = block_size or default_block_size(num_g)
    cmc = Cuhk03Cmc(max_rank) if proto.single_gallery_shot else MarketCmc(max_rank)
    all_ap, all_inp = [], []
    n = valid_query.size
    for start in tqdm(range(0, n, block), desc=f"eval {protocol} Q={num_q} G={num_g}", unit="block",
                      total=-(-n // block), disable=not progress, leave=False):
        stop = min(start + block, n)
        rows = valid_query[start:stop]
        if constant_height:
            compute, keep = _block_rows(valid_query, start, stop, block, num_q)
        else:
            compute, keep = valid_query[start:stop], slice(None)
        dist = dist_rows(compute)
        dist = dist[torch.as_tensor(keep, device=dist.device) if isinstance(keep, np.ndarray) else keep]
        if proto.single_gallery_shot:
            _cuhk03_block(dist, rows, q_pids, q_camids, g_pids, g_camids, cmc)
        lookup = index.lookup(q_pids[rows], None if q_camids is None else q_camids[rows], use_cams)
        ranks = rank_matches(dist, *to_torch_lookup(*lookup, dist.device), max_candidates=_MAX_CANDIDATES)
        if not proto.single_gallery_shot:
            cmc.add(ranks.first_hit(), ranks.num_kept)
        all_ap.append(ranks.average_precision())
        all_inp.append(ranks.inverse_negative_penalty())
    cmc_value = cmc.value()
    return RankResult(cmc=cmc_value, all_AP=np.concatenate(all_ap), all_INP=np.concatenate(all_inp),
                      valid_query=valid_query, num_query=num_q)


def _block_rows(valid_query: np.ndarray, start: int, stop: int, block: int, num_q: int):
    """(query rows to compute, positions of the wanted rows in them) for valid queries [start, stop).

    Every product has min(block, Q) rows (the dense product itself when Q <= block), so BLAS rounds each
    row as in fast-reid's dense ``build_dist`` (see module docstring); extra rows are discarded.
    """
    rows = valid_query[start:stop]
    if num_q <= block:
        return np.arange(num_q), rows
    pad = np.setdiff1d(np.arange(num_q), rows)[:block - rows.size]
    return np.concatenate([rows, pad]), slice(0, rows.size)


def _cuhk03_block(dist, rows, q_pids, q_camids, g_pids, g_camids, cmc: Cuhk03Cmc) -> None:
    """Single-gallery-shot CMC needs each query's whole kept ranking: a stable sort per row (small sets)."""
    order = torch.sort(dist, dim=1, stable=True).indices.cpu().numpy()
    for row, q in zip(order, rows):
        removed = (g_pids[row] == q_pids[q]) & (g_camids[row] == q_camids[q])
        cmc.add_query(g_pids[row[~removed]], q_pids[q])


def evaluate_distmat(distmat, q_pids, g_pids, q_camids=None, g_camids=None, *, protocol: str = "market",
                     max_rank: int | None = None, block_size: int | None = None,
                     progress: bool = False) -> RankResult:
    """Exact metrics from a dense (Q, G) distance matrix (numpy or torch; ascending = better)."""
    is_tensor = isinstance(distmat, torch.Tensor)
    if not is_tensor:
        distmat = np.asarray(distmat, dtype=np.float32)
    num_q, num_g = distmat.shape

    def dist_rows(idx: np.ndarray) -> torch.Tensor:
        if is_tensor:
            return distmat[torch.as_tensor(idx, device=distmat.device)].to(torch.float32)
        return torch.from_numpy(distmat[idx])          # fancy indexing copies: the block is ours

    return _run(dist_rows, num_q, num_g, q_pids, g_pids, q_camids, g_camids, protocol,
                max_rank or get_protocol(protocol).default_max_rank, block_size, progress, False)


@torch.no_grad()
def evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids=None, g_camids=None, *,
                      metric: str = "cosine", protocol: str = "market", max_rank: int | None = None,
                      block_size: int | None = None, device: str | torch.device | None = None,
                      progress: bool = True) -> RankResult:
    """Exact retrieval metrics from query (Q, D) and gallery (G, D) features, blockwise over queries.

    ``metric``: "cosine" (1 - cos, as fast-reid; the text protocol ranks by -cos) or "euclidean"
    (fast-reid's squared distance). ``device``: where distances are computed (default: the features').
    ``protocol``: see ``plugins.evaluation.protocols`` (msvr310: pass scene ids as camids).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    q = torch.as_tensor(q_feats)
    g = torch.as_tensor(g_feats)
    if q.dim() != 2 or g.dim() != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected (Q, D) and (G, D) features, got {tuple(q.shape)} and {tuple(g.shape)}")
    dev = torch.device(device) if device is not None else q.device
    q = q.to(dev, torch.float32)
    g = g.to(dev, torch.float32)
    proto = get_protocol(protocol)
    if metric == "cosine":
        q, g = F.normalize(q, p=2, dim=1), F.normalize(g, p=2, dim=1)
        g_t = g.t()

        def dist_rows(idx: np.ndarray) -> torch.Tensor:
            sim = torch.mm(q[torch.as_tensor(idx, device=dev)], g_t)
            return sim.neg_() if proto.rank_by_similarity else sim.neg_().add_(1)   # == 1 - sim exactly
    else:
        q_sq = q.pow(2).sum(dim=1, keepdim=True)
        g_sq = g.pow(2).sum(dim=1, keepdim=True).t()
        g_t = g.t()

        def dist_rows(idx: np.ndarray) -> torch.Tensor:
            sel = torch.as_tensor(idx, device=dev)
            d = q_sq[sel] + g_sq                        # same op order as fast-reid's compute_euclidean_distance
            return d.addmm_(q[sel], g_t, beta=1, alpha=-2)

    return _run(dist_rows, q.shape[0], g.shape[0], q_pids, g_pids, q_camids, g_camids, protocol,
                max_rank or proto.default_max_rank, block_size, progress, True)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  use_cython=True):
    """Drop-in for ``fastreid.evaluation.rank.evaluate_rank`` (same arguments, same return values).

    Returns ``(cmc, all_AP, all_INP)`` (float32 arrays; AP/INP of the valid queries in order), or
    ``(cmc, mAP)`` with ``use_metric_cuhk03`` (as fast-reid's compiled code). ``use_cython`` is accepted and
    ignored: this implementation is exact and needs no compilation.
    """
    res = evaluate_distmat(distmat, q_pids, g_pids, q_camids, g_camids,
                           protocol="cuhk03" if use_metric_cuhk03 else "market", max_rank=max_rank)
    if use_metric_cuhk03:
        return res.cmc, res.mAP
    return res.cmc, res.all_AP.astype(np.float32), res.all_INP.astype(np.float32)
