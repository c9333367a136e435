"""Tiny models (random init, saved as checkpoints and loaded back strictly) and procedural images for the
inference tests (imported by name: a unique module name, not ``conftest``)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from plugins.config import import_methods, setup_cfg
from plugins.registry import TRAINER_REGISTRY

import_methods()

SIZE = ["INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "MODEL.DEVICE", "cpu",
        "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "4", "MODEL.HEADS.NUM_CLASSES", "4"]
# fast-reid Baseline with OSNet x0.25 (the torchreid checkpoint family tools/convert_weights.py converts)
OSNET = ["MODEL.BACKBONE.NAME", "build_osnet_backbone", "MODEL.BACKBONE.DEPTH", "x0_25", "MODEL.BACKBONE.FEAT_DIM",
         "128", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.WITH_IBN", "False"]
# timm ViT (SAGE's backbone family) on CameraAwareBaseline, 2 blocks of width 32
VIT = ["MODEL.META_ARCHITECTURE", "CameraAwareBaseline", "MODEL.BACKBONE.NAME", "build_timm_vit_backbone",
       "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.TIMM_VIT.NAME", "vit_tiny_patch16_224",
       "MODEL.BACKBONE.TIMM_VIT.IMG_SIZE", "[64, 32]", "MODEL.BACKBONE.TIMM_VIT.DEPTH", "2",
       "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", "32", "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", "2",
       "MODEL.BACKBONE.FEAT_DIM", "32", "MODEL.BACKBONE.DROP_PATH_RATIO", "0.0"]
# CLIP-ReID with the tiny CLIP (random weights): image and text towers
CLIP = ["MODEL.META_ARCHITECTURE", "CLIPReID", "MODEL.BACKBONE.CLIP.NAME", "tiny", "MODEL.BACKBONE.CLIP.WEIGHTS", "",
        "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.CLIP.NUM_CAMERAS", "3", "MODEL.BACKBONE.SIE_COE", "3.0",
        "MODEL.PIXEL_MEAN", "[127.5, 127.5, 127.5]", "MODEL.PIXEL_STD", "[127.5, 127.5, 127.5]"]
FAMILIES = {"osnet": OSNET, "vit": VIT, "clip": CLIP}


def make_cfg(family: str, *opts):
    return setup_cfg("", SIZE + FAMILIES[family] + list(opts))


def save_checkpoint(cfg, path, seed: int = 0) -> str:
    """A randomly initialised model of ``cfg`` (seeded, BN statistics perturbed so eval BN is not identity),
    saved as ``{"model": state_dict}``."""
    torch.manual_seed(seed)
    model = TRAINER_REGISTRY.get(cfg.PLUGINS.TRAINER).build_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def write_images(folder, pids_cams, seed: int = 0, size=(64, 32)):
    """Market-named images ``<pid>_c<cam>s1_<n>_00.jpg`` (PNG content in .png files): one colour per identity
    plus noise, so same-id images are near each other."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for n, (pid, cam) in enumerate(pids_cams):
        base = np.random.default_rng(pid).integers(0, 256, (1, 1, 3))
        img = np.clip(base + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{pid:04d}_c{cam}s1_{n:06d}_00.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return paths
