"""Shared pieces of the RGB / near-infrared / thermal-infrared readers (RGBNT201, RGBNT100, MSVR310).

Every item is ``(rgb_path, pid, camid, extras)`` with ``extras["modalities"] = {"RGB": path, "NI": path,
"TI": path}`` (always these three keys, in ``MODALITIES`` order, whatever the dataset's folder names are).
``item[0]`` is the RGB image so fast-reid's single-image consumers still work. A dataset that stores the three
modalities side by side in one file (RGBNT100) also gives ``extras["tiles"]``: one PIL crop box
``(left, upper, right, lower)`` per modality and ``extras["tiled_size"]`` (width, height) of the whole file;
``load_modalities`` turns either form into three images.
"""
from __future__ import annotations

import os.path as osp
from typing import Mapping

from PIL import Image

MODALITIES = ("RGB", "NI", "TI")


def modality_paths(folders: Mapping[str, str], file_name: str, where: str) -> dict[str, str]:
    """Paths of one sample in per-modality folders (same file name); fails naming the missing file."""
    paths = {}
    for modality in MODALITIES:
        path = osp.join(folders[modality], file_name)
        if not osp.isfile(path):
            raise FileNotFoundError(f"{where}: {modality} image '{path}' is missing (its RGB image is "
                                    f"'{osp.join(folders['RGB'], file_name)}')")
        paths[modality] = path
    return paths


def tile_boxes(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """Crop boxes of ``len(MODALITIES)`` equal tiles laid left to right (RGB | NI | TI)."""
    tile = width // len(MODALITIES)
    return {m: (k * tile, 0, (k + 1) * tile, height) for k, m in enumerate(MODALITIES)}


def _open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read image '{path}': {exc}") from exc


def load_modalities(extras: Mapping) -> dict[str, Image.Image]:
    """Open the three modality images of one item as RGB PIL images (single-channel files are replicated)."""
    paths = extras["modalities"]
    tiles = extras.get("tiles")
    if not tiles:
        return {m: _open_rgb(paths[m]) for m in MODALITIES}
    path = paths["RGB"]
    whole = _open_rgb(path)
    expected = tuple(extras["tiled_size"])
    if whole.size != expected:
        raise ValueError(f"'{path}' is {whole.size[0]}x{whole.size[1]} (w x h); a tiled RGB|NI|TI file must "
                         f"be {expected[0]}x{expected[1]}")
    return {m: whole.crop(tuple(tiles[m])) for m in MODALITIES}
