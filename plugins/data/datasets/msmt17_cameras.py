"""MSMT17 camera subsets as source / target domains (the SAGE multi-camera setting: cameras 12-15 as sources,
cameras 5 and 6 as targets).

fast-reid builds datasets by registry name only (``DATASET_REGISTRY.get(name)(root=...)``), so a subset is a
class: ``msmt17_camera_subset(cameras)`` builds one and ``register_msmt17_camera_subset`` registers it. Names
say which cameras (1-based, as in the file names): ``MSMT17Cam5`` (camera 5), ``MSMT17Cam12_13_14_15``.

Expected tree: fast-reid's MSMT17 layout (V1, or V2 with ``mask_train_v2`` / ``mask_test_v2``)::

    $FASTREID_DATASETS/MSMT17_V1/
        train/<pid>/<pid>_<idx>_<camera>_<date><time>_<frame>_<n>[_ex].jpg    test/...
        list_train.txt  list_val.txt  list_query.txt  list_gallery.txt      lines "<rel path> <pid>"

The camera is the 3rd ``_`` field of the file name (1-15). How a subset with camera set C is formed:

- train   = the ``list_train`` images taken by a camera in C (``+ list_val`` of C with ``combineall``, as
  fast-reid's MSMT17 does). As a source it is labelled; as a target its labels are simply not used.
- query   = the ``list_query`` images taken by a camera in C.
- gallery = ``gallery_scope="all"`` (registered classes): the full ``list_gallery`` (all 15 cameras), so the
  standard cross-camera protocol (same id + same camera removed) still leaves matches for a one-camera domain;
  ``"subset"``: only the gallery images of C (needs at least two cameras, else no valid match can remain).

Training pids/camids are prefixed ``msmt17_`` (not the subset name) on purpose: subsets of one dataset share
identities, so listing several subsets in ``DATASETS.NAMES`` (the "Blend" baseline) merges the same person
seen by different cameras instead of splitting them into different classes. camid = camera - 1, as fast-reid.
"""
from __future__ import annotations

import os.path as osp
from typing import Iterable

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.msmt17 import TEST_DIR_KEY, TRAIN_DIR_KEY, VERSION_DICT

from .base import ExtendedImageDataset, require_dir, require_file, train_label

NUM_CAMERAS = 15


def read_msmt17_list(path: str) -> list[tuple[str, int, int]]:
    """``list_*.txt`` -> [(relative image path, pid, camera 1..15)]; errors name the file and line."""
    require_file(path, "MSMT17 list")
    entries = []
    with open(path, "r") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"'{path}' line {line_no}"
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f"{where}: expected '<relative image path> <pid>', got {line.strip()!r}")
            parts = osp.basename(fields[0]).split("_")
            if len(parts) < 3 or not parts[2].isdigit() or not 1 <= int(parts[2]) <= NUM_CAMERAS:
                raise ValueError(f"{where}: the 3rd '_' field of {fields[0]!r} must be a camera 1..{NUM_CAMERAS}")
            entries.append((fields[0], int(fields[1]), int(parts[2])))
    return entries


def camera_counts(entries: Iterable[tuple[str, int, int]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, _, cam in entries:
        counts[cam] = counts.get(cam, 0) + 1
    return dict(sorted(counts.items()))


class MSMT17CameraSubset(ExtendedImageDataset):
    """Base of the generated subset classes; see the module docstring for how the splits are formed."""

    dataset_name = "msmt17"
    cameras: tuple[int, ...] = ()
    gallery_scope = "all"

    def __init__(self, root: str = "datasets", check_images: bool = True, **kwargs):
        if not self.cameras:
            raise TypeError("use msmt17_camera_subset(cameras) to build a reader for chosen cameras")
        main = next((v for v in VERSION_DICT if osp.isdir(osp.join(root, v))), None)
        if main is None:
            raise FileNotFoundError(f"{type(self).__name__}: none of {[osp.join(root, v) for v in VERSION_DICT]} "
                                    f"exists")
        base = osp.join(root, main)
        self.train_dir = require_dir(osp.join(base, VERSION_DICT[main][TRAIN_DIR_KEY]), "MSMT17 training images")
        self.test_dir = require_dir(osp.join(base, VERSION_DICT[main][TEST_DIR_KEY]), "MSMT17 test images")
        lists = {k: read_msmt17_list(osp.join(base, f"list_{k}.txt")) for k in ("train", "val", "query", "gallery")}
        self.check_images = check_images
        keep = set(self.cameras)
        train_src = lists["train"] + (lists["val"] if kwargs.get("combineall") else [])
        train = self._items(train_src, self.train_dir, keep, True, "list_train/list_val")
        if not train:
            raise ValueError(f"{type(self).__name__}: no training image of cameras {self.cameras} in '{base}'")
        query = self._items(lists["query"], self.test_dir, keep, False, "list_query")
        gallery_cams = keep if self.gallery_scope == "subset" else set(range(1, NUM_CAMERAS + 1))
        gallery = self._items(lists["gallery"], self.test_dir, gallery_cams, False, "list_gallery")
        super().__init__(train, query, gallery, **kwargs)

    def _items(self, entries, img_dir: str, cameras: set, is_train: bool, source: str) -> list[tuple]:
        data = []
        for rel, pid, cam in entries:
            if cam not in cameras:
                continue
            path = osp.join(img_dir, rel)
            if self.check_images and not osp.isfile(path):
                raise FileNotFoundError(f"{type(self).__name__}: image '{path}' listed in {source} not found")
            camid = cam - 1
            if is_train:
                pid, camid = train_label(self.dataset_name, pid), train_label(self.dataset_name, camid)
            data.append((path, pid, camid))
        return data


def subset_name(cameras: Iterable[int]) -> str:
    return "MSMT17Cam" + "_".join(str(c) for c in sorted(set(cameras)))


def msmt17_camera_subset(cameras: Iterable[int], *, gallery_scope: str = "all",
                         name: str | None = None) -> type[MSMT17CameraSubset]:
    """Build (not register) a reader class for the MSMT17 images of ``cameras`` (1-based)."""
    cams = tuple(sorted(set(int(c) for c in cameras)))
    if not cams or any(not 1 <= c <= NUM_CAMERAS for c in cams):
        raise ValueError(f"cameras must be a non-empty subset of 1..{NUM_CAMERAS}, got {cams}")
    if gallery_scope not in ("all", "subset"):
        raise ValueError(f"gallery_scope must be 'all' or 'subset', got {gallery_scope!r}")
    if gallery_scope == "subset" and len(cams) < 2:
        raise ValueError(f"gallery_scope='subset' with the single camera {cams[0]}: the cross-camera protocol "
                         f"would remove every true match; use gallery_scope='all'")
    name = name or subset_name(cams) + ("" if gallery_scope == "all" else "Gallery")
    doc = (f"MSMT17 camera subset: cameras {list(cams)}; train/query from those cameras, gallery: "
           f"{'all 15 cameras' if gallery_scope == 'all' else 'those cameras'}.")
    return type(name, (MSMT17CameraSubset,), {"cameras": cams, "gallery_scope": gallery_scope, "__doc__": doc,
                                              "__module__": __name__})


def register_msmt17_camera_subset(cameras: Iterable[int], **kwargs) -> type[MSMT17CameraSubset]:
    """Build and register a subset reader (the name must be new to DATASET_REGISTRY)."""
    cls = msmt17_camera_subset(cameras, **kwargs)
    try:
        DATASET_REGISTRY.get(cls.__name__)
    except KeyError:
        DATASET_REGISTRY.register(cls)
    else:  # fast-reid's registry only asserts; say it plainly (and also under python -O)
        raise ValueError(f"a dataset named '{cls.__name__}' is already registered; pass name=... to choose another")
    globals()[cls.__name__] = cls  # importable by name (pickling, ``from ... import MSMT17Cam5``)
    return cls


# SAGE, Appendix B: each of cameras 12-15 is one source domain, cameras 5 and 6 are target domains; the pooled
# sources give the "Blend" baseline one reader, the pooled targets one test set.
SAGE_CAMERA_SUBSETS = ((5,), (6,), (12,), (13,), (14,), (15,), (5, 6), (12, 13, 14, 15))
for _cams in SAGE_CAMERA_SUBSETS:
    register_msmt17_camera_subset(_cams)
del _cams
