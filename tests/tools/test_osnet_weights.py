"""Real pretrained OSNet x0.25 (torchreid, Market-1501) converted into fast-reid's Baseline ranks real Market images.

The ranking metric here is computed with scikit-learn's ``average_precision_score`` per query (Market protocol:
gallery images of the query's own pid *and* camera are excluded; queries without a valid match are skipped), so
the check does not depend on the evaluator being tested elsewhere.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from fastreid.config import get_cfg
from fastreid.data.build import build_reid_test_loader
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.transforms import build_transforms
from fastreid.modeling.meta_arch import build_model
from fastreid.utils.checkpoint import Checkpointer
from plugins.compat.checkpoint import UnsafeCheckpointError
from plugins.config import add_plugins_config
from plugins.modeling import convert_osnet as conv

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "base" / "osnet_x0_25_market_eval.yml"


def _load_tool():
    spec = importlib.util.spec_from_file_location("convert_weights", REPO / "tools" / "convert_weights.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


tool = _load_tool()


def _cfg():
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    return cfg


def market_rank(q_feat, g_feat, q_pids, g_pids, q_cams, g_cams) -> tuple[float, float]:
    """(mAP, rank-1) of cosine ranking under the Market-1501 protocol, via sklearn's average precision."""
    q = torch.nn.functional.normalize(q_feat, dim=1)
    g = torch.nn.functional.normalize(g_feat, dim=1)
    sim = (q @ g.t()).numpy()
    aps, r1 = [], []
    for i in range(len(q_pids)):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        y = g_pids[keep] == q_pids[i]
        if not y.any():
            continue
        aps.append(average_precision_score(y, sim[i, keep]))
        r1.append(float(y[np.argmax(sim[i, keep])]))
    return float(np.mean(aps)), float(np.mean(r1))


def evaluate_on_market_sample(model, root: Path) -> tuple[float, float]:
    cfg = _cfg()
    data = DATASET_REGISTRY.get("Market1501")(root=str(root))
    test_set = CommDataset(data.query + data.gallery, build_transforms(cfg, is_train=False), relabel=False)
    loader, num_query = build_reid_test_loader(test_set=test_set, test_batch_size=32, num_query=len(data.query),
                                               num_workers=0)
    feats, pids, cams = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            feats.append(model(batch))
            pids.append(batch["targets"])
            cams.append(batch["camids"])
    feats, pids, cams = torch.cat(feats), torch.cat(pids).numpy(), torch.cat(cams).numpy()
    assert feats.shape == (64, 512), feats.shape  # torchreid's eval feature: the 512-d fc output
    return market_rank(feats[:num_query], feats[num_query:], pids[:num_query], pids[num_query:],
                       cams[:num_query], cams[num_query:])


@pytest.fixture(scope="module")
def converted(shared_data, tmp_path_factory):
    src = shared_data / "weights" / "osnet_x0_25_market1501.pt"
    out = tmp_path_factory.mktemp("osnet") / "osnet_x0_25_fastreid.pth"
    assert tool.main(["--from", "torchreid-osnet", "--input", str(src), "--output", str(out),
                      "--config-file", str(CONFIG)]) == 0
    report = conv.convert(conv.read_torchreid_state_dict(str(src)), conv.build_target(str(CONFIG)).state_dict())
    return out, report


def test_mapping_accounts_for_every_key(converted, shared_data):
    _, report = converted
    src = conv.read_torchreid_state_dict(str(shared_data / "weights" / "osnet_x0_25_market1501.pt"))
    target = conv.build_target(str(CONFIG)).state_dict()
    assert report.problems() == []
    assert report.rows_with("unmatched") == [] and report.rows_with("missing") == []
    assert report.rows_with("shape") == []
    # every tensor of torchreid's feature extractor (conv1..conv5) fills every tensor of fast-reid's OSNet
    backbone = {r[0] for r in report.rows_with("loaded") if r[1].startswith("backbone.")}
    assert backbone == {k for k in src if k.startswith("conv")}
    assert len(backbone) == sum(k.startswith("backbone.") for k in target) == 558
    assert {r[0] for r in report.rows_with("loaded") if r[1].startswith("heads.")} == {
        "fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias", "fc.1.running_mean", "fc.1.running_var",
        "fc.1.num_batches_tracked", "classifier.weight"}
    assert [r[0] for r in report.rows_with("dropped")] == ["classifier.bias"]


def test_converted_tensors_equal_the_source(converted, shared_data):
    out, _ = converted
    src = torch.load(shared_data / "weights" / "osnet_x0_25_market1501.pt", weights_only=True)
    model = build_model(_cfg())
    Checkpointer(model).load(str(out))
    sd = model.state_dict()
    for key in ("conv1.conv.weight", "conv3.1.conv2c.2.bn.running_var", "conv5.bn.weight"):
        assert torch.equal(sd["backbone." + key], src[key])
    assert torch.equal(sd["heads.fc.0.weight"], src["fc.0.weight"])
    assert torch.equal(sd["heads.weight"], src["classifier.weight"])


def test_real_weights_rank_far_above_random_init(converted, shared_data):
    out, _ = converted
    torch.manual_seed(0)
    random_model = build_model(_cfg())  # same architecture, OSNet's own random init, no weights loaded
    rand_map, rand_r1 = evaluate_on_market_sample(random_model, shared_data)

    model = build_model(_cfg())
    Checkpointer(model).load(str(out))
    real_map, real_r1 = evaluate_on_market_sample(model, shared_data)
    print(f"Market sample: real mAP {real_map:.4f} R-1 {real_r1:.4f} | random-init mAP {rand_map:.4f} "
          f"R-1 {rand_r1:.4f}")
    assert real_map > rand_map + 0.3
    assert real_r1 >= 0.9


class _Marker:
    """Unpickling this creates a file: proof of whether arbitrary code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_arbitrary_object_checkpoint_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.conv.weight": torch.zeros(1), "payload": _Marker(marker)}, bad)
    with pytest.raises(UnsafeCheckpointError, match="Refusing to unpickle"):
        conv.read_torchreid_state_dict(str(bad))
    assert not marker.exists()
    # a plain pickle of a tensor-free dict is readable but not a model
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ValueError, match="holds no tensors"):
        conv.read_torchreid_state_dict(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        conv.read_torchreid_state_dict(str(tmp_path / "absent.pt"))


def test_shape_mismatch_and_unknown_keys_are_reported():
    target = conv.build_target(str(CONFIG)).state_dict()
    src = {"conv1.conv.weight": torch.zeros(3, 3, 7, 7), "attention.weight": torch.zeros(2)}
    report = conv.convert(src, target)
    assert ("conv1.conv.weight", "backbone.conv1.conv.weight",
            "shape mismatch ((3, 3, 7, 7) vs (16, 3, 7, 7))") in report.rows
    assert ("attention.weight", "-", "unmatched") in report.rows
    missing = {r[1] for r in report.rows_with("missing")}
    assert "backbone.conv5.conv.weight" in missing and "heads.fc.0.weight" in missing
    assert len(report.problems()) == 2 + len(missing) - 1  # all but the optional classifier (heads.weight)
