"""Unlabelled target pools carry fast-reid's string train camids; the pseudo-label path numbers them once, so a
camera-aware (SIE) backbone gets stable integers during feature extraction and training."""
import numpy as np
from fastreid.config import get_cfg
from fastreid.modeling import build_model
from PIL import Image

from plugins.config import add_plugins_config
from plugins.engine.pseudo_label_hook import extract_features, index_cameras


def test_index_cameras_known_answer():
    items = [("a.jpg", "market_2"), ("b.jpg", "market_0"), ("c.jpg", "market_2"), ("d.jpg", "market_1")]
    assert index_cameras(items) == [("a.jpg", 2), ("b.jpg", 0), ("c.jpg", 2), ("d.jpg", 1)]
    assert index_cameras([("x", 10), ("y", 9), ("z", 10)]) == [("x", 1), ("y", 0), ("z", 1)]  # numeric order


def test_sie_backbone_extracts_features_of_an_unlabelled_pool(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(path)
        items.append((str(path), f"synthreidc_{i % 3}"))
    cfg = add_plugins_config(get_cfg())
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "CameraAwareBaseline",
                         "MODEL.BACKBONE.NAME", "build_timm_vit_backbone", "MODEL.BACKBONE.PRETRAIN", False,
                         "MODEL.BACKBONE.TIMM_VIT.NAME", "vit_tiny_patch16_224", "MODEL.BACKBONE.TIMM_VIT.IMG_SIZE",
                         [64, 32], "MODEL.BACKBONE.TIMM_VIT.DEPTH", 1, "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", 32,
                         "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", 2, "MODEL.BACKBONE.FEAT_DIM", 32,
                         "MODEL.BACKBONE.TIMM_VIT.NUM_CAMERAS", 3, "MODEL.HEADS.NUM_CLASSES", 1,
                         "INPUT.SIZE_TRAIN", [64, 32], "INPUT.SIZE_TEST", [64, 32], "DATALOADER.NUM_WORKERS", 0])
    model = build_model(cfg)
    assert model.backbone_takes_camids  # SIE on: camera ids reach the backbone
    feats = extract_features(cfg, model, index_cameras(items), batch_size=4)
    assert feats.shape == (5, 32) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
