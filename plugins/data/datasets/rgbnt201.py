"""RGBNT201: multi-modal (RGB / NIR / TIR) person ReID, 201 ids, 4 cameras.

Reference: Zheng et al., "Robust multi-modality person re-identification", AAAI 2021 (PFNet).

Expected tree (the same file name in each modality folder)::

    $FASTREID_DATASETS/RGBNT201/
        train_171/{RGB,NI,TI}/000001_cam1_0_00.jpg ...
        test/{RGB,NI,TI}/...

pid = the first ``_`` field (6 digits); camid = the digit of the second field ``camX`` minus 1 (0-3).
``test`` serves as both query and gallery; fast-reid's evaluation then removes same-pid same-camera gallery
items, which also removes each query itself. Items follow ``multimodal_base`` (``extras["modalities"]``).
"""
from __future__ import annotations

import glob
import os.path as osp
import re

from fastreid.data.datasets import DATASET_REGISTRY

from .base import ExtendedImageDataset, require_dir, train_label
from .multimodal_base import MODALITIES, modality_paths

_CAMERA_FIELD = re.compile(r"^cam(\d)$")


def parse_rgbnt201_name(file_name: str) -> tuple[int, int]:
    """``000001_cam1_0_00.jpg`` -> (pid 1, camid 0)."""
    fields = osp.splitext(file_name)[0].split("_")
    cam = _CAMERA_FIELD.match(fields[1]) if len(fields) > 1 else None
    if not fields[0].isdigit() or cam is None:
        raise ValueError(f"'{file_name}': expected '<6-digit pid>_cam<X>_...' (RGBNT201 naming)")
    camid = int(cam.group(1)) - 1
    if not 0 <= camid <= 3:
        raise ValueError(f"'{file_name}': camera {camid + 1} outside 1..4")
    return int(fields[0]), camid


@DATASET_REGISTRY.register()
class RGBNT201(ExtendedImageDataset):
    dataset_name = "rgbnt201"

    def __init__(self, root: str = "datasets", **kwargs):
        self.dataset_dir = require_dir(osp.join(root, "RGBNT201"), "RGBNT201")
        self.train_dir = osp.join(self.dataset_dir, "train_171")
        self.test_dir = osp.join(self.dataset_dir, "test")
        train = self.process_dir(self.train_dir, is_train=True)
        test = self.process_dir(self.test_dir, is_train=False)
        super().__init__(train, test, list(test), **kwargs)

    def process_dir(self, dir_path: str, is_train: bool) -> list[tuple]:
        folders = {m: require_dir(osp.join(dir_path, m), f"RGBNT201 {m} images") for m in MODALITIES}
        rgb_files = sorted(glob.glob(osp.join(folders["RGB"], "*.jpg")))
        if not rgb_files:
            raise FileNotFoundError(f"RGBNT201: no *.jpg images in '{folders['RGB']}'")
        data = []
        for rgb_path in rgb_files:
            name = osp.basename(rgb_path)
            pid, camid = parse_rgbnt201_name(name)
            paths = modality_paths(folders, name, "RGBNT201")
            if is_train:
                pid, camid = train_label(self.dataset_name, pid), train_label(self.dataset_name, camid)
            data.append((paths["RGB"], pid, camid, {"modalities": paths}))
        return data
