"""fast-reid's ReidEvaluator goes through the blockwise evaluator, with the same results dict."""
import numpy as np
import pytest
import torch

import plugins  # noqa: F401  (applies the patches)
from fastreid.config import get_cfg
from fastreid.evaluation import reid_evaluation
from fastreid.evaluation.query_expansion import aqe
from fastreid.evaluation.reid_evaluation import ReidEvaluator
from fastreid.utils import comm
from plugins.compat import applied_patches
from plugins.compat.evaluator import _evaluate_builds_dense_matrix, blockwise_reid_evaluate
from plugins.evaluation import evaluate_features

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def make_inputs(seed=0, num=400, num_query=60, dim=24, num_ids=40):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_ids, (num,), generator=gen)
    feats = torch.randn(num_ids, dim, generator=gen)[ids] + torch.randn(num, dim, generator=gen)
    cams = torch.randint(0, 5, (num,), generator=gen)
    return feats, ids, cams, num_query


def make_evaluator(cfg, feats, ids, cams, num_query, batch=64):
    ev = ReidEvaluator(cfg, num_query=num_query)
    for s in range(0, len(ids), batch):
        ev.process({"targets": ids[s:s + batch], "camids": cams[s:s + batch]}, feats[s:s + batch])
    return ev


def cpu_cfg(**test):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    for key, value in test.items():
        node, attr = key.split("__")
        setattr(getattr(cfg.TEST, node), attr, value) if attr else setattr(cfg.TEST, node, value)
    return cfg


def test_patch_is_applied_and_feature_tested():
    assert applied_patches().get("blockwise_reid_evaluate") is True
    assert ReidEvaluator.evaluate is blockwise_reid_evaluate
    assert _evaluate_builds_dense_matrix(ReidEvaluator.fastreid_evaluate)    # the host's version: dense
    assert not _evaluate_builds_dense_matrix(blockwise_reid_evaluate)
    assert not _evaluate_builds_dense_matrix()                              # now patched: not needed


def test_no_compile_is_attempted(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ReidEvaluator tried to compile Cython")

    monkeypatch.setattr(reid_evaluation, "compile_helper", refuse)
    monkeypatch.setattr("subprocess.run", refuse)
    feats, ids, cams, nq = make_inputs()
    make_evaluator(cpu_cfg(), feats, ids, cams, nq).evaluate()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_same_results_dict_as_fastreid_and_as_direct(metric):
    feats, ids, cams, nq = make_inputs()
    ev = make_evaluator(cpu_cfg(METRIC__=metric), feats, ids, cams, nq)
    ours = ev.evaluate()
    host = ReidEvaluator.fastreid_evaluate(ev)      # fast-reid's own evaluate (pure-Python ranking here)
    assert list(ours) == list(host) == ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"]
    for key in host:
        assert ours[key] == pytest.approx(host[key], abs=1e-4), key
    direct = evaluate_features(feats[:nq], feats[nq:], ids[:nq], ids[nq:], cams[:nq], cams[nq:],
                               metric=metric, progress=False).fastreid_results()
    assert dict(ours) == dict(direct)


def test_host_evaluate_crashes_on_short_rankings_ours_does_not():
    feats, ids, cams, nq = make_inputs(num=40, num_query=10, num_ids=5)     # gallery of 30 < max_rank
    ev = make_evaluator(cpu_cfg(), feats, ids, cams, nq)
    with pytest.raises(ValueError):
        ReidEvaluator.fastreid_evaluate(ev)          # ragged CMC rows in the pure-Python fallback
    out = ev.evaluate()
    assert 0 <= out["mAP"] <= 100 and 0 <= out["Rank-1"] <= 100


def test_aqe_is_honoured():
    feats, ids, cams, nq = make_inputs()
    cfg = cpu_cfg(AQE__ENABLED=True)
    out = make_evaluator(cfg, feats, ids, cams, nq).evaluate()
    qf, gf = aqe(feats[:nq], feats[nq:], cfg.TEST.AQE.QE_TIME, cfg.TEST.AQE.QE_K, cfg.TEST.AQE.ALPHA)
    direct = evaluate_features(qf, gf, ids[:nq], ids[nq:], cams[:nq], cams[nq:], progress=False)
    assert dict(out) == dict(direct.fastreid_results())
    plain = make_evaluator(cpu_cfg(), feats, ids, cams, nq).evaluate()
    assert out["mAP"] != plain["mAP"]


def test_roc_keeps_the_dense_path_and_same_keys():
    feats, ids, cams, nq = make_inputs()
    ev = make_evaluator(cpu_cfg(ROC__ENABLED=True), feats, ids, cams, nq)
    ours, host = ev.evaluate(), ReidEvaluator.fastreid_evaluate(ev)
    assert list(ours) == list(host) and any(k.startswith("TPR@FPR") for k in ours)
    for key in host:
        assert ours[key] == pytest.approx(host[key], abs=1e-4), key


def test_distributed_gathering_like_fastreid(monkeypatch):
    feats, ids, cams, nq = make_inputs()
    single = make_evaluator(cpu_cfg(), feats, ids, cams, nq).evaluate()
    ev = make_evaluator(cpu_cfg(), feats, ids, cams, nq)
    half = len(ev._predictions) // 2
    parts = [ev._predictions[:half], ev._predictions[half:]]          # what two ranks would hold
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: parts)
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    assert dict(ev.evaluate()) == dict(single)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert ev.evaluate() == {}


def test_rerank_keeps_fastreids_dense_path():
    feats, ids, cams, nq = make_inputs(num=200, num_query=30)
    ev = make_evaluator(cpu_cfg(RERANK__ENABLED=True), feats, ids, cams, nq)
    try:
        host = ReidEvaluator.fastreid_evaluate(ev)
    except RuntimeError as exc:          # fast-reid's jaccard distance calls .cuda(); CPU support is separate
        pytest.skip(f"fast-reid's re-ranking cannot run on this machine: {exc}")
    ours = ev.evaluate()
    for key in host:
        assert ours[key] == pytest.approx(host[key], abs=1e-4), key
