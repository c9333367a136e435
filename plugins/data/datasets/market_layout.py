"""Readers of datasets published in the Market-1501 folder layout (the SAGE-reID Appendix G sources).

Expected tree (``$FASTREID_DATASETS`` = ``root``)::

    <root>/Occluded_Duke/                 Occluded-DukeMTMC (Miao et al., ICCV 2019; the authors' release)
        bounding_box_train/0001_c2_f0046182.jpg     <pid>_c<camera>_<anything>.jpg
        query/...                                   occluded query boxes
        bounding_box_test/...                       gallery
    <root>/IUSTPersonReID/                IUSTPersonReID (Moghaddam et al., 2025), same layout, 19 cameras
        bounding_box_train/ query/ bounding_box_test/

A box whose name starts with ``-1_`` (junk) is skipped; camera ids are 1-based in the names (any number of
digits) and 0-based here. Files are read in sorted order, so item order is the same on every machine. A name
that does not follow ``<pid>_c<camera>`` fails naming the file.
"""
from __future__ import annotations

import glob
import os
import re
from typing import List

from fastreid.data.datasets import DATASET_REGISTRY

from .base import ExtendedImageDataset, require_dir, train_label

__all__ = ["MarketLayoutDataset", "OccludedDukeMTMC", "IUSTPersonReID"]

_NAME = re.compile(r"^([-\d]+)_c(\d+)")
SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


class MarketLayoutDataset(ExtendedImageDataset):
    """Train / query / gallery from ``<root>/<dataset_dir>/{bounding_box_train, query, bounding_box_test}``."""

    dataset_dir = ""
    dataset_name = "market_layout"

    def __init__(self, root: str = "datasets", **kwargs):
        self.root = root
        self.dataset_dir = os.path.join(root, type(self).dataset_dir)
        what = f"{type(self).__name__} (Market-1501 layout)"
        dirs = {split: require_dir(os.path.join(self.dataset_dir, sub), what) for split, sub in SPLITS.items()}
        train = self.process_dir(dirs["train"], is_train=True)
        query = self.process_dir(dirs["query"], is_train=False)
        gallery = self.process_dir(dirs["gallery"], is_train=False)
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path: str, is_train: bool) -> List[tuple]:
        paths = sorted(glob.glob(os.path.join(dir_path, "*.jpg")) + glob.glob(os.path.join(dir_path, "*.png")))
        if not paths:
            raise FileNotFoundError(f"{type(self).__name__}: no .jpg/.png images in '{dir_path}'")
        data = []
        for path in paths:
            match = _NAME.match(os.path.basename(path))
            if match is None:
                raise ValueError(f"{type(self).__name__}: '{path}' does not follow the <pid>_c<camera>_... naming")
            pid, camid = int(match.group(1)), int(match.group(2)) - 1
            if pid == -1:
                continue  # junk boxes, as fast-reid's Market / Duke readers
            if camid < 0:
                raise ValueError(f"{type(self).__name__}: '{path}' has camera 0; cameras are numbered from 1")
            if is_train:
                data.append((path, train_label(self.dataset_name, pid), train_label(self.dataset_name, camid)))
            else:
                data.append((path, pid, camid))
        return data


@DATASET_REGISTRY.register()
class OccludedDukeMTMC(MarketLayoutDataset):
    """Occluded-DukeMTMC: 15,618 train / 2,210 query / 17,661 gallery boxes, 8 cameras."""

    dataset_dir = "Occluded_Duke"
    dataset_name = "occluded_duke"


@DATASET_REGISTRY.register()
class IUSTPersonReID(MarketLayoutDataset):
    """IUSTPersonReID: 72,393 train boxes of 1,193 ids, 1,428 query boxes, 19 cameras."""

    dataset_dir = "IUSTPersonReID"
    dataset_name = "iust"
