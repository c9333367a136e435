"""BNNeck re-estimation of training-free merges: with one batch holding every target image and deterministic
transforms, the running statistics are exactly the batch mean and unbiased variance of the backbone features."""
from pathlib import Path

import numpy as np
import torch
from fastreid.config import get_cfg
from fastreid.modeling import build_model
from PIL import Image

from plugins.compat.config_fixes import adjust_config_for_host
from plugins.config import add_plugins_config
from plugins.sage.bn_recalibration import recalibrate_batchnorm
from plugins.sage.config import add_sage_config

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg():
    cfg = add_sage_config(add_plugins_config(get_cfg()))
    cfg.merge_from_file(str(REPO / "configs" / "sage" / "demo.yml"))
    cfg.merge_from_list(["MODEL.BACKBONE.TIMM_VIT.DEPTH", 1, "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", 32,
                         "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", 2, "MODEL.BACKBONE.FEAT_DIM", 32,
                         "MODEL.HEADS.NUM_CLASSES", 1, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", 0,
                         # deterministic "train" transforms, so the expected statistics can be computed here
                         "INPUT.FLIP.ENABLED", False, "INPUT.PADDING.ENABLED", False, "INPUT.REA.ENABLED", False])
    adjust_config_for_host(cfg)
    return cfg


def test_statistics_are_the_target_feature_moments(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        path = tmp_path / f"{i}.png"  # lossless: the transform pipeline reads back exactly these pixels
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(path)
        items.append((str(path), f"cam{i % 2}"))
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    bn = model.heads.bottleneck[0]
    bn.running_mean.fill_(5.0)  # stale statistics, as left by the experts
    bn.running_var.fill_(9.0)
    weight = bn.weight.detach().clone()
    momentum = bn.momentum

    assert recalibrate_batchnorm(cfg, model, items, batch_size=6) == 1

    pixels = torch.stack([torch.as_tensor(np.array(Image.open(p)), dtype=torch.float32).permute(2, 0, 1)
                          for p, _ in items])
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image({"images": pixels}))[..., 0, 0]  # (6, 32)
    assert torch.allclose(bn.running_mean, feats.mean(0), atol=1e-4)
    assert torch.allclose(bn.running_var, feats.var(0, unbiased=True), rtol=1e-3, atol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    assert torch.equal(bn.weight, weight) and bn.momentum == momentum  # only the statistics change
    assert not model.training


def test_model_without_batchnorm_is_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert recalibrate_batchnorm(None, model, []) == 0


def test_seeded_and_leaves_global_rng_alone(tmp_path):
    """With random augmentations on, two re-estimations give the same statistics; the caller's RNG stream is
    unchanged by them."""
    rng = np.random.default_rng(1)
    items = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(path)
        items.append((str(path), "cam0"))
    cfg = tiny_cfg()
    cfg.merge_from_list(["INPUT.FLIP.ENABLED", True, "INPUT.REA.ENABLED", True])
    torch.manual_seed(0)
    model = build_model(cfg)
    bn = model.heads.bottleneck[0]
    torch.manual_seed(123)
    recalibrate_batchnorm(cfg, model, items, batch_size=4)
    after_first = torch.rand(1)
    first = bn.running_mean.clone()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    assert torch.equal(after_first, expected_next)  # the global torch stream was restored
    recalibrate_batchnorm(cfg, model, items, batch_size=4)
    assert torch.equal(bn.running_mean, first)
