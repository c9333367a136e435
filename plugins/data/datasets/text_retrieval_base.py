"""Shared reader of the text-based person retrieval annotations (CUHK-PEDES, ICFG-PEDES, RSTPReid).

Each dataset is one JSON list of records ``{"split", "captions": [str, ...], <path key>, "id", ...}`` with
images under ``imgs/``. Subclasses set the folder, the JSON file name, the path key (``file_path`` or
``img_path``), the id base (CUHK-PEDES ids are 1-based, ICFG-PEDES and RSTPReid 0-based; pids here are
always 0-based) and the allowed splits.

Items (fast-reid compatible; ``item[0]`` is always a readable image):

- train: one item per (image, caption), as IRRA does:
  ``(img_path, "<name>_<pid>", "<name>_0", {"caption": str, "image_id": k, "modality": "text"})``; the image
  has no camera, so every training camid is the single ``"<name>_0"``.
- query: one item per caption of the evaluation split (each caption is a query against all its images):
  ``(img_path_of_the_described_image, pid, -1, {"caption": str, "image_id": k, "modality": "text"})``.
- gallery: one item per image of the evaluation split: ``(img_path, pid, 0, {"captions": [...],
  "image_id": k, "modality": "image"})``. Query camid -1 vs gallery camid 0 means a same-camera filter never
  removes a true match; text-image evaluation itself uses no cameras.
"""
from __future__ import annotations

import json
import os.path as osp
from dataclasses import dataclass
from typing import Any, Sequence

from .base import ExtendedImageDataset, require_dir, require_file, train_label


@dataclass(frozen=True)
class TextImageRecord:
    index: int  # position in the JSON list (for error messages)
    split: str
    pid: int  # 0-based
    image_path: str  # relative to imgs/
    captions: tuple[str, ...]


def load_json_list(path: str, what: str) -> list:
    require_file(path, what)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot parse {what} '{path}': {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"{what} '{path}' must hold a JSON list of records, got {type(data).__name__}")
    return data


def _as_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise ValueError(f"{where}: 'id' must be an integer, got {value!r}")
    return int(value)


def parse_text_records(records: Sequence, *, path_key: str, id_base: int, splits: Sequence[str],
                       source: str) -> list[TextImageRecord]:
    """Validate raw JSON records; every error names ``source`` and the record index (and key)."""
    if not records:
        raise ValueError(f"{source} holds no records (an empty list)")
    out = []
    for k, rec in enumerate(records):
        where = f"{source} record {k}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
        for key in ("split", "captions", path_key, "id"):
            if key not in rec:
                raise KeyError(f"{where}: missing key '{key}' (keys: {sorted(rec)})")
        split = rec["split"]
        if split not in splits:
            raise ValueError(f"{where}: split {split!r} is not one of {list(splits)}")
        captions = rec["captions"]
        if (not isinstance(captions, list) or not captions
                or not all(isinstance(c, str) and c.strip() for c in captions)):
            raise ValueError(f"{where}: 'captions' must be a non-empty list of non-empty strings")
        path = rec[path_key]
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: '{path_key}' must be a non-empty relative path, got {path!r}")
        normalised = osp.normpath(path)
        if osp.isabs(path) or normalised == ".." or normalised.startswith(".." + osp.sep):
            raise ValueError(f"{where}: '{path_key}' {path!r} points outside the dataset's imgs/ folder (paths are "
                             f"relative to imgs/)")
        pid = _as_id(rec["id"], where) - id_base
        if pid < 0:
            raise ValueError(f"{where}: id {rec['id']} is below the dataset's first id {id_base}")
        out.append(TextImageRecord(k, split, pid, path, tuple(captions)))
    return out


class TextRetrievalDataset(ExtendedImageDataset):
    """Base of the text-image readers; ``eval_split`` picks which split forms query/gallery ("test"/"val")."""

    dataset_dir = ""
    annotation_file = ""
    path_key = "file_path"
    id_base = 0
    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(self, root: str = "datasets", eval_split: str = "test", check_images: bool = True, **kwargs):
        if eval_split == "train" or eval_split not in self.splits:
            raise ValueError(f"{type(self).__name__}: eval_split must be one of "
                             f"{[s for s in self.splits if s != 'train']}, got {eval_split!r}")
        self.dataset_root = require_dir(osp.join(root, self.dataset_dir), type(self).__name__)
        self.anno_path = osp.join(self.dataset_root, self.annotation_file)
        self.img_dir = osp.join(self.dataset_root, "imgs")
        raw = load_json_list(self.anno_path, f"{type(self).__name__} annotation")
        records = parse_text_records(raw, path_key=self.path_key, id_base=self.id_base, splits=self.splits,
                                     source=f"'{self.anno_path}'")
        if check_images:
            require_dir(self.img_dir, f"{type(self).__name__} images")
            for rec in records:
                if rec.split in ("train", eval_split):
                    path = osp.join(self.img_dir, rec.image_path)
                    if not osp.isfile(path):
                        raise FileNotFoundError(f"'{self.anno_path}' record {rec.index}: image '{path}' not found")
        self.records = records
        self.eval_split = eval_split
        train = self.train_items([r for r in records if r.split == "train"])
        query, gallery = self.eval_items([r for r in records if r.split == eval_split])
        super().__init__(train, query, gallery, **kwargs)

    def train_items(self, records: Sequence[TextImageRecord]) -> list[tuple]:
        cam = train_label(self.dataset_name, 0)
        items = []
        for image_id, rec in enumerate(records):
            path = osp.join(self.img_dir, rec.image_path)
            pid = train_label(self.dataset_name, rec.pid)
            for caption in rec.captions:
                items.append((path, pid, cam, {"caption": caption, "image_id": image_id, "modality": "text"}))
        return items

    def eval_items(self, records: Sequence[TextImageRecord]) -> tuple[list[tuple], list[tuple]]:
        query, gallery = [], []
        for image_id, rec in enumerate(records):
            path = osp.join(self.img_dir, rec.image_path)
            gallery.append((path, rec.pid, 0, {"captions": list(rec.captions), "image_id": image_id,
                                               "modality": "image"}))
            for caption in rec.captions:
                query.append((path, rec.pid, -1, {"caption": caption, "image_id": image_id, "modality": "text"}))
        return query, gallery
