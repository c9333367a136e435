"""The features-in blockwise path equals the dense path (fast-reid's build_dist + exact ranking)."""
import numpy as np
import pytest
import torch

from fastreid.utils.compute_dist import build_dist
from plugins.evaluation import evaluate_distmat, evaluate_features, evaluate_rank
from plugins.evaluation.blockwise import _block_rows


def clustered(seed, num_q, num_g, dim=32, num_ids=60, num_cams=6, noise=0.9):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen)
    ids = torch.randint(0, num_ids, (num_q + num_g,), generator=gen)
    feats = centres[ids] + noise * torch.randn(num_q + num_g, dim, generator=gen)
    cams = torch.randint(0, num_cams, (num_q + num_g,), generator=gen)
    return feats[:num_q], feats[num_q:], ids[:num_q], ids[num_q:], cams[:num_q], cams[num_q:]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [8, 37, 128, None])
def test_features_path_equals_dense_path(metric, block_size):
    q, g, qp, gp, qc, gc = clustered(0, 150, 900)
    q[3] = q[4]                                              # duplicate features
    g[10] = g[11] = g[12]
    dense = evaluate_rank(build_dist(q, g, metric), qp.numpy(), gp.numpy(), qc.numpy(), gc.numpy())
    res = evaluate_features(q, g, qp, gp, qc, gc, metric=metric, block_size=block_size, progress=False)
    np.testing.assert_array_equal(res.cmc, dense[0])
    np.testing.assert_allclose(res.all_AP, dense[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.all_INP, dense[2], rtol=0, atol=1e-6)


def test_features_path_skips_queries_without_valid_match():
    q, g, qp, gp, qc, gc = clustered(1, 40, 300)
    qp[:5] = 999                                             # not in the gallery
    res = evaluate_features(q, g, qp, gp, qc, gc, block_size=16, progress=False)
    dense = evaluate_distmat(build_dist(q, g, "cosine"), qp, gp, qc, gc)
    assert res.num_skipped == dense.num_skipped >= 5
    np.testing.assert_array_equal(res.valid_query, dense.valid_query)
    np.testing.assert_array_equal(res.cmc, dense.cmc)
    np.testing.assert_allclose(res.all_AP, dense.all_AP, rtol=0, atol=1e-12)


def test_text_protocol_ranks_by_similarity():
    q, g, qp, gp, _, _ = clustered(2, 30, 200)
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).t()
    dense = evaluate_distmat(-sim, qp, gp, protocol="text")
    res = evaluate_features(q, g, qp, gp, protocol="text", block_size=8, progress=False)
    assert res.cmc.size == 10
    np.testing.assert_array_equal(res.cmc, dense.cmc)
    np.testing.assert_allclose(res.all_AP, dense.all_AP, rtol=0, atol=1e-12)
    # no camera filter: a full-sort computation over every gallery item gives the same AP
    order = torch.sort(-sim, dim=1, stable=True).indices
    hits = (gp[order] == qp[:, None]).double()
    ap = ((hits.cumsum(1) / torch.arange(1, 201)) * hits).sum(1) / hits.sum(1)
    np.testing.assert_allclose(res.all_AP, ap[torch.as_tensor(res.valid_query)].numpy(), atol=1e-12)


def test_block_rows_keep_a_constant_height():
    valid = np.array([0, 2, 3, 5, 7, 8, 9])
    rows, keep = _block_rows(valid, 4, 7, 4, 10)             # last partial block padded to 4 rows
    assert rows.size == 4 and list(rows[keep]) == [7, 8, 9]
    rows, keep = _block_rows(valid, 0, 7, 16, 10)            # Q <= block: the dense product itself
    assert list(rows) == list(range(10)) and list(keep) == list(valid)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_matches_cpu_within_rounding():
    q, g, qp, gp, qc, gc = clustered(3, 200, 2000, noise=0.5)
    cpu = evaluate_features(q, g, qp, gp, qc, gc, progress=False)
    gpu = evaluate_features(q, g, qp, gp, qc, gc, device="cuda", progress=False)
    assert abs(cpu.mAP - gpu.mAP) < 1e-4 and np.abs(cpu.cmc - gpu.cmc).max() < 0.02
