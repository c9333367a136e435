"""Runtime patch (host.md #6): ``TEST.RERANK`` calls fast-reid's Jaccard distance with ``search_option=0``,
which does ``features.cuda()`` and needs faiss GPU resources. Without them, run its CPU faiss path
(``search_option=3``, same exact search, same result)."""
from __future__ import annotations

import functools

import torch

from .base import Patch


def _no_gpu_search() -> bool:
    import faiss

    return not (torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)


def _cpu_jaccard() -> None:
    import fastreid.utils.compute_dist as compute_dist

    original = compute_dist.compute_jaccard_distance

    @functools.wraps(original)
    def compute_jaccard_distance_cpu(features, k1=20, k2=6, search_option=0, fp16=False):
        return original(features, k1=k1, k2=k2, search_option=3, fp16=fp16)

    # build_dist (used by the evaluator's re-ranking) looks the name up in this module at call time.
    compute_dist.compute_jaccard_distance = compute_jaccard_distance_cpu


PATCHES = [
    Patch("cpu_rerank", "TEST.RERANK: compute_jaccard_distance(search_option=0) calls features.cuda() on a CPU host",
          _no_gpu_search, _cpu_jaccard, stage="runtime"),
]
