"""Sparse Jaccard distance == fast-reid's dense compute_jaccard_distance; DBSCAN labels identical; rho eps."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from fastreid.utils.compute_dist import compute_jaccard_distance as reference
from plugins.clustering import compute_jaccard_distance, dbscan_labels, rho_eps


def clustered(n, dim=32, n_clusters=40, noise=0.45, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim))
    x = centers[rng.integers(0, n_clusters, n)] + noise * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x.astype(np.float32))


def densify(dist):
    """Dense view of a sparse Jaccard distance: pairs not stored are at distance 1."""
    full = np.ones(dist.shape, np.float64)
    coo = dist.tocoo()
    full[coo.row, coo.col] = coo.data
    return full


def assert_matches_reference(feats, k1, k2, eps_list=(0.5, 0.6, 0.7)):
    dense = reference(feats, k1=k1, k2=k2, search_option=3)
    ours = compute_jaccard_distance(feats, k1=k1, k2=k2, search_option=3)
    assert sp.isspmatrix_csr(ours) and ours.has_sorted_indices
    coo = ours.tocoo()
    stored = np.zeros(dense.shape, bool)
    stored[coo.row, coo.col] = True
    np.testing.assert_allclose(coo.data, dense[coo.row, coo.col], atol=1e-5, rtol=0)
    assert (dense[~stored] == 1).all()  # everything not stored is exactly 1 in the reference
    assert (coo.data < 1).all()
    for eps in eps_list:
        want = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense)
        np.testing.assert_array_equal(dbscan_labels(ours, eps=eps, min_samples=4), want)
    return dense, ours


def test_matches_reference_on_clustered_features():
    dense, ours = assert_matches_reference(clustered(600), k1=20, k2=6)
    labels = dbscan_labels(ours, eps=0.6)
    assert labels.max() >= 5 and (labels >= 0).sum() > 300  # a non-trivial clustering was compared


def test_default_k1_30_and_k1_larger_than_clusters():
    # 60 clusters of ~8 images: k1=30 reaches far beyond every cluster
    assert_matches_reference(clustered(480, n_clusters=60, noise=0.3, seed=1), k1=30, k2=6)


def test_duplicates_keep_distance_zero_entries():
    feats = clustered(300, seed=2)
    feats[10:16] = feats[3]  # 7 identical images: their pairwise distance is 0 and must stay stored
    feats[200] = feats[100]
    dense, ours = assert_matches_reference(feats, k1=20, k2=6, eps_list=(0.3, 0.6))
    coo = ours.tocoo()
    zero_pairs = {(int(r), int(c)) for r, c, d in zip(coo.row, coo.col, coo.data) if d == 0}
    assert len(zero_pairs) > ours.shape[0]  # off-diagonal distance-0 pairs exist (the duplicates) and are stored
    # every distance-0 pair of the reference is stored (with a value within 1e-5 of 0, checked above)
    assert {(int(r), int(c)) for r, c in zip(*np.nonzero(dense == 0))} <= set(zip(coo.row.tolist(), coo.col.tolist()))


def test_k2_one_and_numpy_input():
    feats = clustered(250, seed=3)
    assert_matches_reference(feats, k1=12, k2=1)
    a = compute_jaccard_distance(feats.numpy(), k1=12, k2=1)
    b = compute_jaccard_distance(feats, k1=12, k2=1)
    assert (a != b).nnz == 0


def test_fp16_close_to_reference():
    feats = clustered(300, seed=4)
    dense = reference(feats, k1=20, k2=6, search_option=3, fp16=True)
    ours = compute_jaccard_distance(feats, k1=20, k2=6, fp16=True)
    assert np.array_equal(ours.data, ours.data.astype(np.float16).astype(np.float32))  # float16 values
    coo = ours.tocoo()
    # The reference accumulates S in float16 (~100 terms, ulp 5e-4 each); ours sums in float32 the same
    # float16-rounded V, so it differs by the reference's own rounding error only.
    np.testing.assert_allclose(coo.data.astype(np.float32), dense[coo.row, coo.col].astype(np.float32), atol=1e-2)


def test_hand_computed_tiny_example():
    # Two tight pairs far apart on the circle: with k1=2 every point's k-reciprocal set is itself + its twin.
    a = np.deg2rad([0.0, 10.0, 90.0, 100.0])
    feats = np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)
    dist = compute_jaccard_distance(feats, k1=2, k2=1)
    # V[0] = softmax(-[0, d01]) over {0, 1}, d01 = 2 - 2 cos(10 deg); V[1] the mirror image.
    d01 = 2 - 2 * np.cos(np.deg2rad(10.0))
    p = 1 / (1 + np.exp(-d01))  # weight on itself
    s = 2 * (1 - p)  # S(0, 1) = min(p, 1-p) + min(1-p, p)
    want = np.ones((4, 4))
    want[0, 0] = want[1, 1] = want[2, 2] = want[3, 3] = 0.0
    want[0, 1] = want[1, 0] = want[2, 3] = want[3, 2] = 1 - s / (2 - s)
    np.testing.assert_allclose(densify(dist), want, atol=1e-6)
    assert dist.nnz == 8  # the diagonal zeros are stored, the cross-pair 1s are not
    np.testing.assert_array_equal(dbscan_labels(dist, eps=0.6, min_samples=2), [0, 0, 1, 1])


def test_rho_eps_equals_dense_recipe():
    feats = clustered(400, seed=5)
    feats[7] = feats[8]  # a zero distance, dropped by the dense recipe's np.nonzero
    ours = compute_jaccard_distance(feats, k1=20, k2=6)
    full = densify(ours).astype(np.float32)
    for rho in (1.6e-3, 0.05, 0.5):
        tri = np.triu(full, 1)
        tri = np.sort(tri[np.nonzero(tri)], axis=None)
        want = tri[: int(np.round(rho * tri.size))].mean()
        assert rho_eps(ours, rho) == pytest.approx(float(want), abs=1e-6)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="at least k1"):
        compute_jaccard_distance(np.eye(5, dtype=np.float32), k1=10)
    with pytest.raises(ValueError, match="NaN"):
        compute_jaccard_distance(np.full((40, 4), np.nan, np.float32), k1=5)
    with pytest.raises(ValueError, match="eps"):
        dbscan_labels(sp.csr_matrix(np.eye(3)), eps=1.0)
