"""Sparse, exact k-reciprocal Jaccard distance (Zhong et al., CVPR 2017 re-ranking; SpCL's pseudo-label metric).

Same parameters and result as ``fastreid.utils.compute_dist.compute_jaccard_distance`` (which keeps V and the
distance as dense N x N matrices), but every intermediate is sparse: V has O(k1) non-zeros per row, and a pair
of images that shares no support in V has distance exactly 1, so only pairs with distance < 1 are stored.
No library computes this metric on sparse data (scipy's sparse products use (+, *), the Jaccard numerator
needs (+, min)), hence the vectorised numpy below; the heavy products use faiss, torch and scipy.
"""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from .knn import faiss_gpu_available, knn_l2

__all__ = ["compute_jaccard_distance"]

logger = logging.getLogger(__name__)

# Work per chunk, in (row, neighbour) items: bounds the temporary arrays to a few hundred MB at any N.
_CHUNK_ITEMS = 1 << 20


def _as_float32(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    feats = np.ascontiguousarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError("features contain NaN or inf")
    return feats


def _ragged_positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c), without a Python loop."""
    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) + np.repeat(starts.astype(np.int64) - offsets, counts)


def _k_reciprocal(ranks: np.ndarray, kk: int) -> sp.csr_matrix:
    """R(i): j in ranks[i, :kk] with i in ranks[j, :kk] (fast-reid's ``k_reciprocal_neigh``), as a 0/1 CSR."""
    n = ranks.shape[0]
    fwd = ranks[:, :kk]
    kk = fwd.shape[1]
    keep = np.empty(fwd.shape, dtype=bool)
    step = max(1, _CHUNK_ITEMS // (kk * kk))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        back = fwd[fwd[r0:r1]]  # (b, kk, kk)
        keep[r0:r1] = (back == np.arange(r0, r1)[:, None, None]).any(-1)
    rows = np.repeat(np.arange(n, dtype=np.int64), kk)[keep.ravel()]
    mat = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, fwd[keep])), shape=(n, n))
    mat.sort_indices()
    return mat


def _expanded_support(r_full: sp.csr_matrix, r_half: sp.csr_matrix, progress: bool) -> sp.csr_matrix:
    """E(i) = R(i) plus every R_half(c), c in R(i), with |R_half(c) & R(i)| > 2/3 |R_half(c)| (0/1 CSR)."""
    n = r_full.shape[0]
    keys_full = np.repeat(np.arange(n, dtype=np.int64), np.diff(r_full.indptr)) * n + r_full.indices
    half_len = np.diff(r_half.indptr)
    cost = np.add.reduceat(np.append(half_len[r_full.indices], 0), r_full.indptr[:-1]) if r_full.nnz else None
    rows_out, cols_out = [], []
    bounds = _chunk_bounds(cost if cost is not None else np.zeros(n), n)
    for r0, r1 in tqdm(bounds, desc="jaccard: k-reciprocal expansion", disable=not progress, leave=False):
        p0, p1 = r_full.indptr[r0], r_full.indptr[r1]
        pair_keys = keys_full[p0:p1]
        pair_row, cand = pair_keys // n, r_full.indices[p0:p1]
        counts = half_len[cand]
        members = r_half.indices[_ragged_positions(r_half.indptr[cand], counts)].astype(np.int64)
        query = np.repeat(pair_row, counts) * n + members
        pos = np.minimum(np.searchsorted(keys_full, query), keys_full.size - 1)
        hit = keys_full[pos] == query
        pair_id = np.repeat(np.arange(cand.size), counts)
        inter = np.bincount(pair_id, weights=hit, minlength=cand.size)
        accept = inter > 2 / 3 * counts  # same float comparison as the reference
        keys = np.unique(np.concatenate([pair_keys, query[accept[pair_id]]]))
        rows_out.append(keys // n)
        cols_out.append(keys % n)
    rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    cols = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int64)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sp.csr_matrix((np.ones(rows.size, np.float32), cols, indptr), shape=(n, n))


def _chunk_bounds(cost: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Split rows 0..n into consecutive chunks of about ``_CHUNK_ITEMS`` total cost (at least one row each)."""
    cum = np.cumsum(cost, dtype=np.float64)
    bounds, r0 = [], 0
    while r0 < n:
        base = cum[r0 - 1] if r0 else 0.0
        r1 = int(np.searchsorted(cum, base + _CHUNK_ITEMS, side="right"))
        r1 = min(n, max(r1, r0 + 1))
        bounds.append((r0, r1))
        r0 = r1
    return bounds


def _softmax_weights(feats: np.ndarray, support: sp.csr_matrix) -> np.ndarray:
    """V[i, j] = softmax over j in E(i) of -(|f_i|^2 + |f_j|^2 - 2 f_i.f_j), in ``support``'s storage order."""
    n = feats.shape[0]
    if support.nnz == 0:
        return np.zeros(0, np.float32)
    x = torch.from_numpy(feats)
    with warnings.catch_warnings():  # torch flags sparse CSR as "beta"; sampled_addmm is stable on CPU/GPU
        warnings.simplefilter("ignore", UserWarning)
        mask = torch.sparse_csr_tensor(torch.from_numpy(support.indptr.astype(np.int64)),
                                       torch.from_numpy(support.indices.astype(np.int64)),
                                       torch.zeros(support.nnz, dtype=torch.float32), size=(n, n),
                                       check_invariants=False)
    # Only the stored (i, j) dot products: a sampled dense x dense product, O(nnz * D).
    dots = torch.sparse.sampled_addmm(mask, x, x.t(), beta=0.0).values().numpy()
    sq = np.einsum("ij,ij->i", feats, feats)
    rows = np.repeat(np.arange(n), np.diff(support.indptr))
    logits = -(sq[rows] + sq[support.indices] - 2.0 * dots)
    starts = support.indptr[:-1][np.diff(support.indptr) > 0]
    row_max = np.maximum.reduceat(logits, starts)
    nonempty_rows = np.flatnonzero(np.diff(support.indptr) > 0)
    shift = np.zeros(n, np.float32)
    shift[nonempty_rows] = row_max
    expo = np.exp(logits - shift[rows])
    total = np.zeros(n, np.float32)
    total[nonempty_rows] = np.add.reduceat(expo, starts)
    return (expo / total[rows]).astype(np.float32)


def _jaccard_upper(v: sp.csr_matrix, mat_type, progress: bool) -> sp.csr_matrix:
    """Upper triangle (diagonal included) of the distance: 1 - S / (2 - S), S[i, j] = sum_t min(V[i, t], V[j, t]).

    Only pairs i <= j that share support are visited; pairs whose distance rounds to 1 are not stored.
    """
    n = v.shape[0]
    vc = v.tocsc()
    vc.sort_indices()
    col_keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(vc.indptr)) * n + vc.indices
    col_len = np.diff(vc.indptr)
    cost = np.add.reduceat(np.append(col_len[v.indices], 0), v.indptr[:-1]) if v.nnz else np.zeros(n)
    data32 = v.data.astype(np.float32)
    cval32 = vc.data.astype(np.float32)
    row_counts = np.zeros(n, np.int64)
    out_c, out_d = [], []
    for r0, r1 in tqdm(_chunk_bounds(cost // 2 + 1, n), desc="jaccard: sparse min-sum", disable=not progress,
                       leave=False):
        e0, e1 = v.indptr[r0], v.indptr[r1]
        e_row = np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(v.indptr[r0:r1 + 1]))
        e_col = v.indices[e0:e1].astype(np.int64)
        # Only partners j >= i: column t's rows are sorted, so they start at the first row >= i.
        start = np.searchsorted(col_keys, e_col * n + e_row)
        counts = vc.indptr[e_col + 1] - start
        pos = _ragged_positions(start, counts)
        del start, e_col
        part = vc.indices[pos]
        mins = np.minimum(np.repeat(data32[e0:e1], counts), cval32[pos])
        del pos
        local = sp.coo_matrix((mins, (np.repeat((e_row - r0).astype(np.int32), counts), part)),
                              shape=(r1 - r0, n)).tocsr()  # sums the min over shared t per (i, j)
        del mins, part
        s = local.data
        dist = (1.0 - s / (2.0 - s)).astype(mat_type).astype(np.float32)
        dist[dist < 0] = 0
        keep = dist < 1  # S underflowing to ~0 rounds to exactly 1: that pair is "no neighbour", like dense
        kept = np.concatenate([[0], np.cumsum(keep)])
        row_counts[r0:r1] = kept[local.indptr[1:]] - kept[local.indptr[:-1]]
        out_c.append(local.indices[keep].astype(np.int32))
        out_d.append(dist[keep])
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(row_counts, out=indptr[1:])
    indices = np.concatenate(out_c) if out_c else np.zeros(0, np.int32)
    del out_c
    data = np.concatenate(out_d) if out_d else np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def _symmetric_csr(upper: sp.csr_matrix) -> sp.csr_matrix:
    """Full symmetric CSR from its upper triangle (diagonal included), keeping stored zeros.

    scipy's ``+`` would drop explicit zeros (real distance-0 pairs), so the rows are merged by hand:
    row i = (column i of ``upper``, i.e. its entries j <= i) followed by the entries j > i of row i.
    """
    n = upper.shape[0]
    lower = upper.T.tocsr()  # row i: columns j <= i, sorted, diagonal last
    lower.sort_indices()
    u_len = np.diff(upper.indptr)
    has_diag = np.zeros(n, bool)
    nonempty = u_len > 0
    has_diag[nonempty] = upper.indices[upper.indptr[:-1][nonempty]] == np.flatnonzero(nonempty)
    u_start = upper.indptr[:-1] + has_diag
    u_cnt = u_len - has_diag
    l_cnt = np.diff(lower.indptr)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(l_cnt + u_cnt, out=indptr[1:])
    indices = np.empty(indptr[-1], np.int32)
    data = np.empty(indptr[-1], upper.dtype)
    for r0, r1 in _chunk_bounds(l_cnt + u_cnt, n):
        rows = slice(r0, r1)
        src = _ragged_positions(lower.indptr[r0:r1], l_cnt[rows])
        dst = _ragged_positions(indptr[r0:r1], l_cnt[rows])
        indices[dst], data[dst] = lower.indices[src], lower.data[src]
        src = _ragged_positions(u_start[rows], u_cnt[rows])
        dst = _ragged_positions(indptr[r0:r1] + l_cnt[rows], u_cnt[rows])
        indices[dst], data[dst] = upper.indices[src], upper.data[src]
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


@torch.no_grad()
def compute_jaccard_distance(features, k1: int = 30, k2: int = 6, search_option: int = 0, fp16: bool = False,
                             progress: bool | None = None) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance of every pair of rows of ``features``, as a sparse symmetric matrix.

    Args:
        features: (N, D) torch tensor or numpy array; L2-normalised in the usual use (the formula is
            |f_i - f_j|^2 either way, as in the reference).
        k1: k of the k-reciprocal sets (R(i, k1)); the expansion uses R(j, round(k1 / 2)). Default 30 as in
            SpCL and the issue; fast-reid's own function defaults to 20 (the SAGE code passes 20).
        k2: local query expansion: V[i] becomes the mean of V over i's top-k2 neighbours (k2=1: none).
        search_option: 0, 1, 2 = faiss GPU index when faiss has GPU support and a GPU is visible, else the
            CPU index (fast-reid's 0-2 are GPU-only variants of the same exact search); 3 = CPU index.
        fp16: round V and the distance to float16 precision, as the reference's float16 matrices do (the
            result is still a float32 CSR: scipy.sparse has no float16; memory is O(N * k) either way).
        progress: tqdm bars for the chunked steps (default: when N >= 20,000).

    Returns:
        (N, N) float32 ``scipy.sparse.csr_matrix`` with sorted indices, storing
        every pair whose distance is < 1; every pair not stored has distance exactly 1. Stored zeros are
        real distance-0 neighbours (e.g. duplicate images) and are never dropped.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if search_option not in (0, 1, 2, 3):
        raise ValueError(f"search_option must be 0, 1, 2 (GPU when available) or 3 (CPU), got {search_option}")
    feats = _as_float32(features)
    n = feats.shape[0]
    if n < k1:
        raise ValueError(f"compute_jaccard_distance needs at least k1={k1} features, got {n}")
    if progress is None:
        progress = n >= 20_000
    mat_type = np.float16 if fp16 else np.float32
    t0 = time.perf_counter()

    use_gpu = search_option < 3 and faiss_gpu_available()
    ranks = knn_l2(feats, k1, use_gpu=use_gpu)
    t_knn = time.perf_counter()

    # k_reciprocal_neigh(initial_rank, i, k) reads initial_rank[:, :k + 1] of a k1-column matrix.
    r_full = _k_reciprocal(ranks, k1 + 1)
    r_half = _k_reciprocal(ranks, int(np.around(k1 / 2)) + 1)
    support = _expanded_support(r_full, r_half, progress)
    # scipy.sparse has no float16: fp16 rounds the values like the reference's float16 V, stored as float32.
    v = sp.csr_matrix((_softmax_weights(feats, support).astype(mat_type).astype(np.float32), support.indices,
                       support.indptr),
                      shape=(n, n))
    del r_full, r_half, support

    if k2 != 1:
        nq = ranks[:, :k2].shape[1]
        qe = sp.csr_matrix((np.ones(n * nq, np.float32), ranks[:, :k2].ravel(), np.arange(0, n * nq + 1, nq)),
                           shape=(n, n))
        v = qe @ v.astype(np.float32)  # scipy's product drops exact zeros, like the reference's "V != 0"
        v.data /= np.float32(nq)
        v.data = v.data.astype(mat_type).astype(np.float32)
        v.sort_indices()
    del ranks
    t_v = time.perf_counter()

    dist = _symmetric_csr(_jaccard_upper(v, mat_type, progress))
    logger.info("jaccard distance: N=%d nnz=%d (%.1f per row), knn %.1fs, V %.1fs, jaccard %.1fs", n, dist.nnz,
                dist.nnz / n, t_knn - t0, t_v - t_knn, time.perf_counter() - t_v)
    return dist
