"""DeMo's optimizer groups and epoch schedule (the official solver), and the evaluation protocols through the
exact blockwise evaluator (RGBNT201 / Market: same id + same camera removed; MSVR310: same id + same scene)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fastreid.modeling import build_model

from plugins.config import import_methods, setup_cfg
from plugins.demo.evaluation import DeMoEvaluator, _removal_ids
from plugins.demo.solver import build_demo_optimizer, build_demo_scheduler

import_methods()
TINY = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.CLIP.NAME", "tiny", "MODEL.BACKBONE.CLIP.WEIGHTS", "",
        "MODEL.BACKBONE.PRETRAIN", "False", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
        "MODEL.HEADS.NUM_CLASSES", "4", "SOLVER.MAX_EPOCH", "50"]


@pytest.fixture(scope="module")
def cfg_model():
    cfg = setup_cfg("configs/demo/rgbnt201.yml", TINY)
    return cfg, build_model(cfg)


def test_learning_rates_per_group(cfg_model):
    cfg, model = cfg_model
    opt = build_demo_optimizer(cfg, model)
    lr = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lr["encoder.tower.visual.conv1.weight"] == pytest.approx(5e-6)
    assert lr["encoder.tower.visual.transformer.resblocks.0.attn.in_proj_bias"] == pytest.approx(5e-6)  # not x2
    assert lr["encoder.tower.camera_embed"] == pytest.approx(3.5e-4)
    assert lr["pife.RGB.fc.weight"] == pytest.approx(3.5e-4) and lr["pife.RGB.fc.bias"] == pytest.approx(7e-4)
    assert lr["atmoe.gate.q.weight"] == pytest.approx(3.5e-4)
    assert "bottleneck.bias" not in lr  # frozen
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in opt.param_groups)
    assert isinstance(opt, torch.optim.Adam)


def test_epoch_schedule_warms_every_group_from_the_same_lr(cfg_model):
    cfg, model = cfg_model
    opt = build_demo_optimizer(cfg, model)
    sched = build_demo_scheduler(cfg, opt)["lr_sched"]
    by_name = lambda: {g["name"]: g["lr"] for g in opt.param_groups}  # noqa: E731
    first = by_name()
    factor = lambda t: 1 + sched._calculate_noise(t)  # noqa: E731  timm's draw with seed 42 + t
    # epoch 0: timm's initial value, warmup_lr_init exactly (no noise before the first step)
    assert first["encoder.tower.visual.conv1.weight"] == first["pife.RGB.fc.weight"] == pytest.approx(3.5e-5)
    for _ in range(10):
        sched.step()  # fast-reid's LRScheduler hook: one call per epoch
    after = by_name()  # epoch 10: warm-up over, cosine at t = 10 of 50
    cos = lambda base: 3.5e-7 + 0.5 * (base - 3.5e-7) * (1 + np.cos(np.pi * 10 / 50))  # noqa: E731
    assert after["encoder.tower.visual.conv1.weight"] == pytest.approx(cos(5e-6) * factor(10))  # warmed DOWN
    assert after["pife.RGB.fc.bias"] == pytest.approx(cos(7e-4) * factor(10))
    assert all(0.33 <= factor(t) <= 1.67 for t in range(50))
    state = sched.state_dict()
    assert state["epoch"] == 10


def test_msvr310_protocol_removes_same_scene_not_same_camera():
    # query: vehicle 1, camera 0, scene 5. gallery: [v1 cam0 scene 6], [v1 cam1 scene 5], [v2 ...]
    items = [("q", 1, 0, {"scene": 5}), ("g0", 1, 0, {"scene": 6}), ("g1", 1, 1, {"scene": 5}),
             ("g2", 2, 1, {"scene": 7})]
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    feats = feats / feats.norm(dim=1, keepdim=True)
    pids = np.array([1, 1, 1, 2])

    def result(protocol):
        ev = DeMoEvaluator(1, pids, _removal_ids(items, protocol), protocol=protocol)
        ev.process(None, feats)
        return ev.evaluate()
    # market: g0 (same cam) removed; the valid match g1 is nearest -> R-1 100, AP 1
    assert result("market")["Rank-1"] == pytest.approx(100) and result("market")["mAP"] == pytest.approx(100)
    # msvr310: g1 (same scene) removed; the valid match g0 is ranked after g2 -> R-1 0, AP 1/2
    assert result("msvr310")["Rank-1"] == pytest.approx(0) and result("msvr310")["mAP"] == pytest.approx(50)


def test_msvr310_protocol_needs_scenes():
    with pytest.raises(ValueError, match="scene"):
        _removal_ids([("q", 1, 0)], "msvr310")
