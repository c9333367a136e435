"""A gallery's features on disk (safetensors) with its image paths, ids and cameras; re-indexing is incremental.

File layout: tensor ``features`` (N, D) float32; metadata (strings, as safetensors stores them): ``format``,
``model`` (fingerprint of the config and weights the features came from), and JSON lists ``paths``, ``pids``
(-1 unknown), ``camids``, ``stamps`` (``size:mtime_ns`` of each file, so a replaced file is embedded again).

``update_index`` re-embeds only items whose path is new or whose file changed, drops items no longer listed, and
re-embeds everything when the model fingerprint differs (features of two models are not comparable).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["GalleryIndex", "IMAGE_EXTENSIONS", "list_image_items", "parse_market_name", "model_fingerprint",
           "update_index"]

logger = logging.getLogger("fastreid." + __name__)

FORMAT = "plugins.inference.gallery/1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
# Market-1501 / DukeMTMC / VeRi-776 file names: <pid>_c<cam>...; MSMT17: <pid>_<seq>_<cam>_...
_MARKET = re.compile(r"^(-?\d+)_c(\d+)")
_MSMT = re.compile(r"^(\d{4})_(\d+)_(\d+)_")


def parse_market_name(name: str) -> Tuple[int, int]:
    """``(pid, camid)`` from a ReID file name (Market/Duke/VeRi ``0002_c1s1_...``, MSMT17 ``0000_045_12_...``),
    camid 0-based as fast-reid's readers; ``(-1, 0)`` when the name carries neither."""
    base = os.path.basename(name)
    m = _MARKET.match(base)
    if m:
        return int(m.group(1)), int(m.group(2)) - 1
    m = _MSMT.match(base)
    if m:
        return int(m.group(1)), int(m.group(3)) - 1
    return -1, 0


def list_image_items(folder: str) -> List[tuple]:
    """Reader items ``(path, pid, camid)`` of every image under ``folder`` (recursive, sorted paths); ids and
    cameras from the file names where they carry them (``parse_market_name``), else ``(-1, 0)``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"gallery folder '{folder}' does not exist")
    paths = []
    for root, _, files in os.walk(folder):
        paths.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under '{folder}'")
    return [(p, *parse_market_name(p)) for p in sorted(paths)]


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


# Config sections that do not change a model's features (how it trains, where it writes, how it is searched).
_NOT_MODEL = ("OUTPUT_DIR", "SOLVER", "DATALOADER", "DATASETS", "TEST")


def model_fingerprint(cfg, weights: str) -> str:
    """sha256 of the config parts that shape the features (all but ``_NOT_MODEL``, plus ``TEST.FLIP`` and
    without ``MODEL.DEVICE``) and the weights file's path, size and modification time."""
    kept = cfg.clone()
    kept.defrost()
    for key in _NOT_MODEL:
        kept.pop(key, None)
    kept.MODEL.pop("DEVICE", None)
    kept.TEST_FLIP = bool(cfg.TEST.FLIP.ENABLED) if "TEST" in cfg else False
    h = hashlib.sha256(kept.dump().encode())
    if weights and os.path.isfile(weights):
        h.update(f"{os.path.abspath(weights)}|{_stamp(weights)}".encode())
    else:
        h.update(str(weights).encode())
    return h.hexdigest()


@dataclass
class GalleryIndex:
    """Features (N, D) of N gallery images with their paths, ids (-1 unknown), cameras and file stamps."""
    features: torch.Tensor
    paths: List[str]
    pids: List[int]
    camids: List[int]
    stamps: List[str]
    model: str = ""
    embedded: int = field(default=0, compare=False)  # how many features the last update computed

    def __len__(self) -> int:
        return len(self.paths)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = {"format": FORMAT, "model": self.model, "paths": json.dumps(self.paths),
                "pids": json.dumps([int(p) for p in self.pids]), "camids": json.dumps([int(c) for c in self.camids]),
                "stamps": json.dumps(self.stamps)}
        save_file({"features": self.features.float().contiguous()}, path + ".tmp", metadata=meta)
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, path: str) -> "GalleryIndex":
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"'{path}' is not a gallery index ({FORMAT}); metadata format "
                                 f"{meta.get('format')!r}")
            feats = f.get_tensor("features")
        out = cls(feats, json.loads(meta["paths"]), json.loads(meta["pids"]), json.loads(meta["camids"]),
                  json.loads(meta["stamps"]), meta.get("model", ""))
        if feats.shape[0] != len(out.paths):
            raise ValueError(f"'{path}': {feats.shape[0]} features for {len(out.paths)} paths")
        return out


def update_index(items: Sequence[tuple], embed: Callable[[Sequence[tuple]], torch.Tensor], path: Optional[str],
                 fingerprint: str) -> GalleryIndex:
    """The index of ``items`` (reader items, in order), reusing the features stored at ``path`` for unchanged
    files and embedding only the others with ``embed(items) -> (n, D)``; saved back to ``path`` when given."""
    items = list(items)
    stamps = [_stamp(it[0]) for it in items]
    old = GalleryIndex.load(path) if path and os.path.isfile(path) else None
    if old is not None and old.model != fingerprint:
        logger.info("%s was built with another config or weights: embedding every image again", path)
        old = None
    known = {} if old is None else {(p, s): k for k, (p, s) in enumerate(zip(old.paths, old.stamps))}
    todo = [k for k, (it, s) in enumerate(zip(items, stamps)) if (it[0], s) not in known]
    new_feats = embed([items[k] for k in todo]) if todo else None
    dim = new_feats.shape[1] if new_feats is not None else (old.features.shape[1] if old is not None else 0)
    feats = torch.zeros(len(items), dim)
    if new_feats is not None:
        feats[todo] = new_feats.float()
    todo_set = set(todo)
    keep = [k for k in range(len(items)) if k not in todo_set]
    if keep:
        feats[keep] = old.features[[known[(items[k][0], stamps[k])] for k in keep]]
    index = GalleryIndex(feats, [it[0] for it in items], [int(it[1]) for it in items],
                         [int(it[2]) if not isinstance(it[2], str) else 0 for it in items], stamps, fingerprint,
                         embedded=len(todo))
    if path:
        index.save(path)
    logger.info("gallery index: %d images, %d embedded, %d reused", len(items), len(todo), len(keep))
    return index
