"""Exact top-k vs brute force, faiss vs exact, re-ranking vs fast-reid's reference, recall known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugins.inference.search import (Ranking, exact_topk, faiss_topk, recall_at_k, rerank_distances,
                                      topk_from_distances)


def _features(q=23, g=157, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=gen), torch.randn(g, d, generator=gen)


def _brute(q, g, metric):
    """Dense distances in float64 and a stable numpy argsort (ties by gallery index)."""
    q, g = q.double(), g.double()
    if metric == "cosine":
        d = 1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
    else:
        d = torch.cdist(q, g) ** 2
    return d.numpy(), np.argsort(d.numpy(), axis=1, kind="stable")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block", [4, None])
def test_exact_topk_equals_brute_force(metric, block):
    q, g = _features()
    ranking = exact_topk(q, g, 10, metric=metric, block_size=block)
    dist, order = _brute(q, g, metric)
    np.testing.assert_array_equal(ranking.indices, order[:, :10])
    np.testing.assert_allclose(ranking.distances, np.take_along_axis(dist, order[:, :10], 1), atol=1e-4)
    if metric == "cosine":
        np.testing.assert_allclose(ranking.scores, 1 - ranking.distances)


def test_ties_broken_by_gallery_index_and_k_capped():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])  # rows 0, 2, 3 are the same direction
    ranking = exact_topk(torch.tensor([[3.0, 0.0]]), g, 10)
    assert ranking.indices.tolist() == [[0, 2, 3, 1]]
    assert ranking.distances.shape == (1, 4)


def test_same_id_same_camera_removed():
    q, g = _features(q=6, g=40)
    q_pids, q_cams = np.arange(6) % 3, np.zeros(6, int)
    g_pids, g_cams = np.arange(40) % 5, np.arange(40) % 2
    ranking = exact_topk(q, g, 40, q_pids=q_pids, g_pids=g_pids, q_camids=q_cams, g_camids=g_cams, block_size=4)
    dist, _ = _brute(q, g, "cosine")
    removed = (q_pids[:, None] == g_pids[None]) & (q_cams[:, None] == g_cams[None])
    dist[removed] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")
    kept = (~removed).sum(1)
    for i in range(6):
        np.testing.assert_array_equal(ranking.indices[i, :kept[i]], order[i, :kept[i]])
        assert (ranking.indices[i, kept[i]:] == -1).all() and np.isinf(ranking.distances[i, kept[i]:]).all()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_flat_equals_exact(metric):
    q, g = _features(q=31, g=300, d=24, seed=3)
    exact = exact_topk(q, g, 15, metric=metric)
    flat = faiss_topk(q, g, 15, metric=metric, kind="flat")
    np.testing.assert_array_equal(flat.indices, exact.indices)
    np.testing.assert_allclose(flat.distances, exact.distances, atol=1e-4)
    assert recall_at_k(flat, exact) == 1.0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_measured_against_exact(kind):
    gen = torch.Generator().manual_seed(4)  # identities as clusters, as ReID features are
    centres = torch.randn(50, 16, generator=gen)
    g = centres.repeat(40, 1) + 0.3 * torch.randn(2000, 16, generator=gen)
    q = centres[:40] + 0.3 * torch.randn(40, 16, generator=gen)
    exact = exact_topk(q, g, 10)
    approx = faiss_topk(q, g, 10, kind=kind, nlist=32, nprobe=4)
    recall = recall_at_k(approx, exact)
    assert 0.8 <= recall <= 1.0  # approximate, far above chance (10 / 2000)
    # probing every list makes IVF exact
    if kind == "ivf":
        full = faiss_topk(q, g, 10, kind="ivf", nlist=16, nprobe=16)
        assert recall_at_k(full, exact) == 1.0


def test_recall_known_answer():
    exact = Ranking(np.array([[0, 1, 2, 3], [4, 5, 6, 7]]), np.zeros((2, 4), np.float32), "cosine")
    approx = Ranking(np.array([[0, 1, 9, 8], [7, 6, 5, 4]]), np.zeros((2, 4), np.float32), "cosine")
    assert recall_at_k(approx, exact) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_rerank_equals_fastreid_reference():
    """k-reciprocal re-ranking with the sparse Jaccard == fast-reid's dense compute_jaccard_distance mixed as its
    evaluator mixes it (TEST.RERANK), and the ranking of those distances."""
    from fastreid.utils import compute_dist

    q, g = _features(q=12, g=60, d=8, seed=5)
    k1, k2, lam = 6, 3, 0.3
    ours = rerank_distances(q, g, k1=k1, k2=k2, lambda_value=lam)
    qn, gn = F.normalize(q, dim=1), F.normalize(g, dim=1)
    jac = compute_dist.compute_jaccard_distance(torch.cat([qn, gn]), k1=k1, k2=k2, search_option=3)
    reference = jac[:12, 12:] * (1 - lam) + compute_dist.compute_cosine_distance(qn, gn) * lam
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5)
    assert not np.allclose(reference, compute_dist.compute_cosine_distance(qn, gn), atol=1e-3)  # it re-ranked
    ranked = topk_from_distances(ours, 10, "cosine")
    np.testing.assert_array_equal(ranked.indices, np.argsort(reference, axis=1, kind="stable")[:, :10])
