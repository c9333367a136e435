"""MSVR310: multi-modal (RGB / NIR / TIR) vehicle ReID, 310 vehicles, scenes and 8 cameras.

Reference: Zheng et al., "Multi-spectral vehicle re-identification with cross-directional consistency
network and a high-quality benchmark" (MSVR310), 2022.

Expected tree (the same file name in the three modality folders of a vehicle)::

    $FASTREID_DATASETS/MSVR310/{bounding_box_train,query3,bounding_box_test}/<vid>/{vis,ni,th}/<name>

From the file name (Python slices, as the official code): vid = ``name[0:4]``, scene = ``name[6:9]``,
camera = ``name[11]`` (kept as written, 0-7). ``extras["scene"]`` carries the scene because MSVR310's
evaluation removes gallery items with the same vid AND the same scene (not the same camera); an evaluator must
apply that rule (fast-reid's default removes same-pid same-camera instead). ``vis/ni/th`` map to RGB/NI/TI.
"""
from __future__ import annotations

import os
import os.path as osp

from fastreid.data.datasets import DATASET_REGISTRY

from .base import ExtendedImageDataset, require_dir, train_label
from .multimodal_base import modality_paths

_FOLDERS = {"RGB": "vis", "NI": "ni", "TI": "th"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def parse_msvr310_name(file_name: str) -> tuple[int, int, int]:
    """-> (vid, scene, camera) from ``name[0:4]``, ``name[6:9]``, ``name[11]``."""
    vid, scene, cam = file_name[0:4], file_name[6:9], file_name[11:12]
    if not (vid.isdigit() and scene.isdigit() and cam.isdigit() and len(scene) == 3):
        raise ValueError(f"'{file_name}': expected vid in chars 0-3, scene in chars 6-8 and the camera in char 11 "
                         f"(MSVR310 naming)")
    return int(vid), int(scene), int(cam)


@DATASET_REGISTRY.register()
class MSVR310(ExtendedImageDataset):
    dataset_name = "msvr310"

    def __init__(self, root: str = "datasets", **kwargs):
        self.dataset_dir = require_dir(osp.join(root, "MSVR310"), "MSVR310")
        train = self.process_dir(osp.join(self.dataset_dir, "bounding_box_train"), is_train=True)
        query = self.process_dir(osp.join(self.dataset_dir, "query3"), is_train=False)
        gallery = self.process_dir(osp.join(self.dataset_dir, "bounding_box_test"), is_train=False)
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path: str, is_train: bool) -> list[tuple]:
        require_dir(dir_path, "MSVR310 images")
        data = []
        for vid_dir in sorted(os.listdir(dir_path)):
            vid_path = osp.join(dir_path, vid_dir)
            if not osp.isdir(vid_path):
                continue
            folders = {m: require_dir(osp.join(vid_path, f), f"MSVR310 {m} images") for m, f in _FOLDERS.items()}
            for name in sorted(os.listdir(folders["RGB"])):
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                vid, scene, cam = parse_msvr310_name(name)
                paths = modality_paths(folders, name, "MSVR310")
                pid, camid = vid, cam
                if is_train:
                    pid, camid = train_label(self.dataset_name, vid), train_label(self.dataset_name, cam)
                data.append((paths["RGB"], pid, camid, {"modalities": paths, "scene": scene}))
        if not data:
            raise FileNotFoundError(f"MSVR310: no images under '{dir_path}/<vid>/vis/'")
        return data
