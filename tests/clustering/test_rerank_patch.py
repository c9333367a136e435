"""Host patch cpu_rerank: fast-reid's TEST.RERANK path (build_dist(metric="jaccard")) runs without CUDA."""
import numpy as np
import pytest
import torch

import fastreid.utils.compute_dist as compute_dist
from plugins.compat.base import applied_patches
from plugins.compat.rerank import _no_gpu_search

pytestmark = pytest.mark.skipif(not _no_gpu_search(), reason="GPU faiss present: the patch is not needed")


def test_original_fails_on_cpu_and_patch_fixes_it():
    assert applied_patches().get("cpu_rerank") is True
    original = compute_dist.compute_jaccard_distance.__wrapped__
    feats = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    with pytest.raises((RuntimeError, AssertionError, AttributeError)):  # features.cuda() / faiss GPU missing
        original(feats, k1=5, k2=2)  # the default search_option=0, as build_dist passes
    q, g = feats[:10], feats[10:]
    dist = compute_dist.build_dist(q, g, metric="jaccard", k1=5, k2=2)  # what ReidEvaluator calls
    want = original(torch.cat([q, g]), k1=5, k2=2, search_option=3)[:10, 10:]
    assert dist.shape == (10, 30)
    np.testing.assert_array_equal(dist, want)
