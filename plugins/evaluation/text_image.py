"""``TextImageEvaluator``: fast-reid's evaluator interface for text-to-image retrieval.

``process`` receives text batches (query captions, ``text_tokens``) and image batches (gallery, ``images``) in
any order; ``evaluate`` ranks every caption against every gallery image (cosine, nothing removed: the ``text``
protocol of ``plugins.evaluation``) and returns R@1/5/10, mAP, mINP in percent (``RankResult.retrieval_results``).
Features are gathered over ranks as fast-reid's ``ReidEvaluator`` does.
"""
from __future__ import annotations

import copy
import itertools
import logging
from collections import OrderedDict

import torch
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm

from .blockwise import evaluate_features

__all__ = ["TextImageEvaluator"]

logger = logging.getLogger("fastreid." + __name__)


class TextImageEvaluator(DatasetEvaluator):
    """Batches with ``images`` are gallery items, batches without are caption queries; ``targets`` are ids."""

    def __init__(self, *, device: str = "cpu"):
        """
        Args:
            device: where the blockwise similarities are computed ("cpu" or "cuda").
        """
        self.device = device
        self._predictions = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        self._predictions.append({"feats": outputs.detach().to("cpu", torch.float32),
                                  "pids": torch.as_tensor(inputs["targets"]).cpu(),
                                  "is_image": "images" in inputs})

    def evaluate(self):
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        parts = {flag: [p for p in predictions if p["is_image"] == flag] for flag in (False, True)}
        if not parts[False] or not parts[True]:
            raise ValueError(f"text-to-image evaluation needs caption and image batches, got {len(parts[False])} "
                             f"caption and {len(parts[True])} image batches")
        q = torch.cat([p["feats"] for p in parts[False]])
        g = torch.cat([p["feats"] for p in parts[True]])
        q_pids = torch.cat([p["pids"] for p in parts[False]]).numpy()
        g_pids = torch.cat([p["pids"] for p in parts[True]]).numpy()
        result = evaluate_features(q, g, q_pids, g_pids, metric="cosine", protocol="text", device=self.device,
                                   progress=False)
        if result.num_skipped:
            logger.info("%d of %d captions describe nobody in the gallery and are skipped", result.num_skipped,
                        result.num_query)
        out = OrderedDict(result.retrieval_results())
        for k in (1, 5, 10):  # a gallery smaller than k: R@k counts every gallery rank (the CMC's last value)
            out.setdefault(f"R{k}", float(result.cmc[min(k, result.cmc.size) - 1]) * 100)
        out.move_to_end("mAP")
        out.move_to_end("mINP")
        out["num_captions"], out["num_images"] = float(q.shape[0]), float(g.shape[0])
        return copy.deepcopy(out)
