"""SAGE's "rho" eps heuristic, computed exactly on the sparse Jaccard distance."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["rho_eps"]


def rho_eps(dist: sp.spmatrix, rho: float = 1.6e-3) -> float:
    """Mean of the smallest ``rho`` fraction of the non-zero strict-upper-triangle distances.

    The dense recipe (SSG / MMT / SAGE code) is
    ``tri = np.triu(d, 1); tri = np.sort(tri[np.nonzero(tri)]); eps = tri[:round(rho * tri.size)].mean()``;
    zero distances are dropped by its ``np.nonzero``. Here pairs not stored in ``dist`` count as distance 1,
    so the result is the same without forming the N x N matrix.

    Args:
        dist: (N, N) sparse symmetric distance, all pairs not stored at distance 1.
        rho: fraction of the pair distances to average (SAGE: 1.6e-3).
    """
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    n = dist.shape[0]
    coo = sp.coo_matrix(dist)
    upper = coo.data[coo.row < coo.col].astype(np.float64)
    upper = upper[upper != 0]
    n_unstored = n * (n - 1) // 2 - int((coo.row < coo.col).sum())
    total = upper.size + n_unstored  # every non-zero upper-triangle distance: stored ones + the implicit 1s
    top = int(np.round(rho * total))
    if top == 0:
        raise ValueError(f"rho={rho} of {total} pair distances selects none; raise rho or use a fixed eps")
    if top <= upper.size:
        smallest = np.partition(upper, top - 1)[:top] if top < upper.size else upper
        return float(smallest.mean())
    return float((upper.sum() + (top - upper.size) * 1.0) / top)
