"""CPU smoke runs of the vehicle config families through ``tools/train_net.py`` (in-process): RGBNT100 (tiled
768x128 files, per-modality heads, H = 8, Market protocol) and MSVR310 (per-folder modalities, scene protocol) on
small trees in the real layouts, a random-init tiny CLIP, one epoch each; plus the timm ViT variant's train step."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from PIL import Image

from plugins.config import setup_cfg

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _image(rng, w, h, pid):
    base = np.full((h, w, 3), (pid * 37) % 255, np.uint8)
    return Image.fromarray(np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))


def rgbnt100_tree(root: Path, rng) -> None:
    splits = (("bounding_box_train", range(1, 5)), ("query", range(5, 8)), ("bounding_box_test", range(5, 8)))
    for split, pids in splits:
        d = root / "RGBNT100" / "rgbir" / split
        d.mkdir(parents=True)
        for pid in pids:
            for k, cam in enumerate((1, 2, 3, 4)):
                if split == "query" and k > 0:
                    break
                _image(rng, 768, 128, pid).save(d / f"{pid:04d}_c{cam:03d}_{k:04d}.jpg")


def msvr310_tree(root: Path, rng) -> None:
    splits = (("bounding_box_train", range(1, 5)), ("query3", range(5, 8)), ("bounding_box_test", range(5, 8)))
    for split, pids in splits:
        for pid in pids:
            for scene in (1, 2):
                for cam in (0, 3):
                    if split == "query3" and (scene, cam) != (1, 0):
                        continue
                    name = f"{pid:04d}_s{scene:03d}_v{cam}_{scene * 10 + cam:03d}.jpg"
                    assert name[6:9] == f"{scene:03d}" and name[11] == str(cam)
                    for folder in ("vis", "ni", "th"):
                        d = root / "MSVR310" / split / f"{pid:04d}" / folder
                        d.mkdir(parents=True, exist_ok=True)
                        _image(rng, 64, 32, pid).save(d / name)


OPTS = ["MODEL.BACKBONE.CLIP.NAME", "tiny", "MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",
        "MODEL.DEVICE", "cpu", "INPUT.SIZE_TRAIN", "[32, 64]", "INPUT.SIZE_TEST", "[32, 64]", "INPUT.PADDING.SIZE",
        "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2",
        "SOLVER.MAX_EPOCH", "2", "DEMO.SOLVER.WARMUP_EPOCHS", "0", "SOLVER.CHECKPOINT_PERIOD", "1",
        "TEST.EVAL_PERIOD", "2", "TEST.IMS_PER_BATCH", "16"]  # (fast-reid's timer needs > 3 iterations)


@pytest.mark.parametrize("config,make_tree", [("rgbnt100.yml", rgbnt100_tree), ("msvr310.yml", msvr310_tree)])
def test_vehicle_config_trains_and_evaluates(config, make_tree, tmp_path, train_net_session):
    datasets = tmp_path / "datasets"
    make_tree(datasets, np.random.default_rng(0))
    (tmp_path / "out").mkdir()  # (train_net's default_setup, skipped in-process, creates it)
    with train_net_session(str(datasets)) as (main, _):
        results = main(REPO / "configs" / "demo" / config, *OPTS, "OUTPUT_DIR", str(tmp_path / "out"))
    assert all(math.isfinite(results[m]) and 0 <= results[m] <= 100 for m in ("mAP", "Rank-1"))
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_timm_vit_variant_trains_one_step():
    cfg = setup_cfg(str(REPO / "configs" / "demo" / "rgbnt201_vit.yml"), [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.TIMM_VIT.HUB_PRETRAINED", "False",
        "MODEL.BACKBONE.TIMM_VIT.NAME", "vit_tiny_patch16_224", "MODEL.BACKBONE.FEAT_DIM", "192",
        "MODEL.BACKBONE.TIMM_VIT.IMG_SIZE", "[64, 32]", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
        "MODEL.HEADS.NUM_CLASSES", "2"])
    model = build_model(cfg)
    assert model.dim == 192
    batch = {"modalities": {m: torch.rand(4, 3, 64, 32) * 255 for m in ("RGB", "NI", "TI")},
             "targets": torch.tensor([0, 0, 1, 1]), "camids": torch.tensor([0, 1, 2, 3])}
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    assert model.encoder.backbone.sie_embed.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(batch).shape == (4, 10 * 192)
