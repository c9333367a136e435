"""Runtime patches for fast-reid's ``ReidEvaluator``.

1. ``no_runtime_cython``: ``ReidEvaluator.__init__`` compiles Cython inside site-packages at run time and calls
   ``sys.exit(1)`` on failure (no Cython / compiler / write access) in the middle of training. We never compile
   anything at run time: ranking goes through ``plugins.evaluation``.
2. ``blockwise_reid_evaluate``: ``ReidEvaluator.evaluate`` builds the dense (Q, G) distance matrix (3.8 GB at
   MSMT17 size) and ranks it with the compiled code or, without it, with the pure-Python fallback (~21 min at
   MSMT17 size on 2 cores, and a crash on galleries whose kept ranking is shorter than 50). The patched
   ``evaluate`` uses the exact blockwise evaluator (same results dict; see plugins/evaluation), keeping
   fast-reid's dense path only where the option needs the dense matrix (TEST.RERANK, TEST.ROC, a metric
   other than cosine/euclidean), and ranks that matrix with the plugin's exact ``evaluate_rank``.
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import itertools
import logging
from collections import OrderedDict

from .base import Patch

logger = logging.getLogger(__name__)


def _compiled_ranking_missing() -> bool:
    return importlib.util.find_spec("fastreid.evaluation.rank_cylib.rank_cy") is None


def _skip_runtime_compile() -> None:
    from fastreid.evaluation.reid_evaluation import ReidEvaluator

    ReidEvaluator._compile_dependencies = lambda self: None


def _evaluate_builds_dense_matrix(fn=None) -> bool:
    """Feature test: the host's ``ReidEvaluator.evaluate`` ranks a dense (Q, G) matrix from ``build_dist``."""
    if fn is None:
        from fastreid.evaluation.reid_evaluation import ReidEvaluator

        fn = ReidEvaluator.evaluate
    if getattr(fn, "_plugins_blockwise", False):
        return False
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return "build_dist(query_features, gallery_features" in source and "evaluate_rank(dist" in source


def blockwise_reid_evaluate(self):
    """``ReidEvaluator.evaluate`` with the exact blockwise evaluator (same gathering, options and keys)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from fastreid.evaluation.query_expansion import aqe
    from fastreid.utils import comm
    from fastreid.utils.compute_dist import build_dist
    from sklearn import metrics

    from plugins.evaluation import evaluate_distmat, evaluate_features

    if comm.get_world_size() > 1:
        comm.synchronize()
        predictions = comm.gather(self._predictions, dst=0)
        predictions = list(itertools.chain(*predictions))
        if not comm.is_main_process():
            return {}
    else:
        predictions = self._predictions

    features = torch.cat([p["feats"] for p in predictions], dim=0)
    pids = torch.cat([p["pids"] for p in predictions], dim=0).numpy()
    camids = torch.cat([p["camids"] for p in predictions], dim=0).numpy()
    nq = self._num_query
    query_features, gallery_features = features[:nq], features[nq:]
    query_pids, gallery_pids = pids[:nq], pids[nq:]
    query_camids, gallery_camids = camids[:nq], camids[nq:]

    self._results = OrderedDict()
    cfg = self.cfg
    if cfg.TEST.AQE.ENABLED:
        logger.info("Test with AQE setting")
        query_features, gallery_features = aqe(query_features, gallery_features, cfg.TEST.AQE.QE_TIME,
                                               cfg.TEST.AQE.QE_K, cfg.TEST.AQE.ALPHA)

    metric = cfg.TEST.METRIC
    dist = None
    if cfg.TEST.RERANK.ENABLED or cfg.TEST.ROC.ENABLED or metric not in ("cosine", "euclidean"):
        dist = build_dist(query_features, gallery_features, metric)       # these options need the dense matrix
        if cfg.TEST.RERANK.ENABLED:
            logger.info("Test with rerank setting")
            if metric == "cosine":
                query_features = F.normalize(query_features, dim=1)
                gallery_features = F.normalize(gallery_features, dim=1)
            rerank_dist = build_dist(query_features, gallery_features, metric="jaccard",
                                     k1=cfg.TEST.RERANK.K1, k2=cfg.TEST.RERANK.K2)
            lam = cfg.TEST.RERANK.LAMBDA
            dist = rerank_dist * (1 - lam) + dist * lam
        result = evaluate_distmat(dist, query_pids, gallery_pids, query_camids, gallery_camids, max_rank=50)
    else:
        device = "cuda" if str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available() else "cpu"
        result = evaluate_features(query_features, gallery_features, query_pids, gallery_pids, query_camids,
                                   gallery_camids, metric=metric, protocol="market", max_rank=50,
                                   device=device, progress=comm.is_main_process())
    if result.num_skipped:
        logger.info("%d of %d queries have no valid match in the gallery and are skipped",
                    result.num_skipped, result.num_query)
    self._results.update(result.fastreid_results())

    if cfg.TEST.ROC.ENABLED:
        from fastreid.evaluation.roc import evaluate_roc
        scores, labels = evaluate_roc(dist, query_pids, gallery_pids, query_camids, gallery_camids)
        fprs, tprs, _ = metrics.roc_curve(labels, scores)
        for fpr in [1e-4, 1e-3, 1e-2]:
            ind = np.argmin(np.abs(fprs - fpr))
            self._results["TPR@FPR={:.0e}".format(fpr)] = tprs[ind]

    return copy.deepcopy(self._results)


blockwise_reid_evaluate._plugins_blockwise = True


def _route_evaluate() -> None:
    from fastreid.evaluation.reid_evaluation import ReidEvaluator

    ReidEvaluator.fastreid_evaluate = ReidEvaluator.evaluate    # the host's version, kept for comparison
    ReidEvaluator.evaluate = blockwise_reid_evaluate


PATCHES = [
    Patch("no_runtime_cython", "ReidEvaluator compiles Cython in site-packages and sys.exit(1)s on failure",
          _compiled_ranking_missing, _skip_runtime_compile, stage="runtime"),
    Patch("blockwise_reid_evaluate", "ReidEvaluator.evaluate ranks a dense Q x G matrix (3.8 GB at MSMT17) "
          "with a pure-Python fallback (~21 min; crashes when a kept ranking is shorter than max_rank)",
          _evaluate_builds_dense_matrix, _route_evaluate, stage="runtime"),
]
