"""Exact k-nearest-neighbour search with faiss (the library fast-reid and SpCL use for the same step)."""
from __future__ import annotations

import faiss
import numpy as np


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def knn_l2(features: np.ndarray, k: int, use_gpu: bool = False) -> np.ndarray:
    """Indices of the ``k`` nearest neighbours (squared L2, exact) of every row among all rows.

    Args:
        features: (N, D) float32, C-contiguous.
        k: neighbours per row, self included (it is normally first).
        use_gpu: search with a faiss GPU flat index on every visible GPU instead of the CPU one.

    Returns:
        (N, k) int64, each row sorted by increasing distance.

    The CPU search is one ``IndexFlatL2.search`` call over all queries, exactly as fast-reid's
    ``search_option=3``: faiss picks its BLAS path and blocking from the query count, so splitting the
    queries could change float rounding and hence the order of near-tied neighbours. Its memory is the
    (N, k) output plus faiss's fixed-size internal blocks, i.e. O(N * k) already.
    """
    n, d = features.shape
    if k > n:
        raise ValueError(f"k={k} nearest neighbours requested but only {n} features given")
    index = faiss.IndexFlatL2(d)
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(features)
    _, ranks = index.search(features, k)
    if (ranks < 0).any():
        raise RuntimeError("faiss returned missing neighbours (-1); features may contain NaN/inf")
    return ranks.astype(np.int64, copy=False)
