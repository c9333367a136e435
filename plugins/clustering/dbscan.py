"""DBSCAN on a sparse precomputed distance (scikit-learn's implementation, unchanged)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN
from sklearn.neighbors import sort_graph_by_row_values

__all__ = ["dbscan_labels"]


def dbscan_labels(dist: sp.spmatrix | np.ndarray, eps: float = 0.6, min_samples: int = 4,
                  n_jobs: int | None = None) -> np.ndarray:
    """Cluster labels (-1 = outlier) of DBSCAN(eps, min_samples, metric="precomputed").

    Args:
        dist: (N, N) distance; sparse: pairs not stored are at distance >= 1 (as returned by
            ``compute_jaccard_distance``), stored zeros are neighbours at distance 0.
        eps: neighbourhood radius; must be < 1 for a sparse ``dist`` (pairs not stored are at distance 1,
            which would be neighbours only for eps >= 1).
        min_samples: neighbours (the point itself included) that make a core point.
        n_jobs: scikit-learn's neighbour-search workers.

    Returns:
        (N,) int64 labels, identical to DBSCAN on the dense matrix.
    """
    if not 0 < eps:
        raise ValueError(f"eps must be > 0, got {eps}")
    if sp.issparse(dist):
        if eps >= 1:
            raise ValueError(f"eps={eps} >= 1 would make every pair a neighbour; the sparse distance stores "
                             "only pairs closer than 1, so use eps < 1")
        # scikit-learn wants rows sorted by distance; sorting here avoids its warning and a second copy.
        dist = sort_graph_by_row_values(sp.csr_matrix(dist, copy=True), copy=False, warn_when_not_sorted=False)
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=n_jobs)
    return model.fit_predict(dist).astype(np.int64)
