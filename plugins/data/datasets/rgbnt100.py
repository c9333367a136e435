"""RGBNT100: multi-modal (RGB / NIR / TIR) vehicle ReID, 100 ids, 8 viewpoints ("cameras").

Reference: Li et al., "Multi-spectral vehicle re-identification: a challenge", AAAI 2020 (HAMNet).

Expected tree::

    $FASTREID_DATASETS/RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/0001_c1_....jpg

Each file is ONE 768x128 (w x h) image holding RGB, NI and TI side by side as three 256x128 tiles, left to
right. Items give the same path for the three modalities plus the tile boxes (``multimodal_base``): a loader
crops them (``load_modalities``). ``([-\\d]+)_c([-\\d]+)`` on the file name gives pid and the 1-based camera;
pid -1 (junk) is skipped as in the official code. Market-style evaluation.
"""
from __future__ import annotations

import glob
import os.path as osp
import re

from fastreid.data.datasets import DATASET_REGISTRY

from .base import ExtendedImageDataset, require_dir, train_label
from .multimodal_base import MODALITIES, tile_boxes

TILED_SIZE = (768, 128)  # (width, height) of one RGB|NI|TI file
_NAME = re.compile(r"^([-\d]+)_c([-\d]+)")


@DATASET_REGISTRY.register()
class RGBNT100(ExtendedImageDataset):
    dataset_name = "rgbnt100"
    _junk_pids = [-1]
    num_cameras = 8

    def __init__(self, root: str = "datasets", **kwargs):
        self.dataset_dir = require_dir(osp.join(root, "RGBNT100", "rgbir"), "RGBNT100")
        train = self.process_dir(osp.join(self.dataset_dir, "bounding_box_train"), is_train=True)
        query = self.process_dir(osp.join(self.dataset_dir, "query"), is_train=False)
        gallery = self.process_dir(osp.join(self.dataset_dir, "bounding_box_test"), is_train=False)
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path: str, is_train: bool) -> list[tuple]:
        require_dir(dir_path, "RGBNT100 images")
        files = sorted(glob.glob(osp.join(dir_path, "*.jpg")))
        if not files:
            raise FileNotFoundError(f"RGBNT100: no *.jpg images in '{dir_path}'")
        tiles = tile_boxes(*TILED_SIZE)
        data = []
        for path in files:
            match = _NAME.match(osp.basename(path))
            if match is None:
                raise ValueError(f"'{path}': file name does not start with '<pid>_c<camera>' (RGBNT100 naming)")
            pid, cam = map(int, match.groups())
            if pid == -1:
                continue
            if not 1 <= cam <= self.num_cameras:
                raise ValueError(f"'{path}': camera {cam} outside 1..{self.num_cameras}")
            camid = cam - 1
            if is_train:
                pid, camid = train_label(self.dataset_name, pid), train_label(self.dataset_name, camid)
            extras = {"modalities": {m: path for m in MODALITIES}, "tiles": tiles, "tiled_size": TILED_SIZE}
            data.append((path, pid, camid, extras))
        return data
