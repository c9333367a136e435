"""Aspect-preserving resize + zero padding ("letterbox"), which neither fast-reid nor torchvision ships
(torchvision's ``Resize(max_size=...)`` keeps the aspect but never pads; ``Pad`` pads by a fixed amount).

``ResizePad(size)``: PIL image -> image of exactly ``size`` (H, W): scaled by min(H/h, W/w) (bilinear), pasted in
the centre of a zero (black) canvas. ``letterbox_transforms(cfg, is_train)``: fast-reid's own transform pipeline
of the config with its ``Resize`` replaced by ``ResizePad`` (every other step, flip, pad-crop, erasing, is kept).
"""
from __future__ import annotations

from typing import Sequence

import torchvision.transforms as T
from fastreid.data.transforms import build_transforms
from PIL import Image

__all__ = ["ResizePad", "letterbox_transforms"]


class ResizePad:
    """PIL image (w, h) -> PIL image of ``size`` (H, W), aspect kept, the rest zero-padded (centred)."""

    def __init__(self, size: Sequence[int], fill: int = 0, interpolation=Image.BILINEAR):
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"ResizePad needs a size (H, W) > 0, got {size}")
        self.size = (int(size[0]), int(size[1]))
        self.fill = int(fill)
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        out_h, out_w = self.size
        w, h = img.size
        scale = min(out_h / h, out_w / w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        resized = img.resize((new_w, new_h), self.interpolation)
        canvas = Image.new(img.mode, (out_w, out_h), (self.fill,) * len(img.getbands()))
        canvas.paste(resized, ((out_w - new_w) // 2, (out_h - new_h) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"ResizePad(size={self.size}, fill={self.fill})"


def letterbox_transforms(cfg, is_train: bool) -> T.Compose:
    """fast-reid's ``build_transforms(cfg, is_train)`` with its ``Resize`` step replaced by ``ResizePad`` of the
    same size; fails when the pipeline has no ``Resize`` (INPUT.SIZE_* must be set)."""
    pipeline = build_transforms(cfg, is_train=is_train)
    steps, replaced = [], False
    for step in pipeline.transforms:
        if isinstance(step, T.Resize):
            size = step.size if isinstance(step.size, (list, tuple)) and len(step.size) == 2 else None
            if size is None:
                raise ValueError(f"letterbox needs INPUT.SIZE_{'TRAIN' if is_train else 'TEST'} as (H, W), got "
                                 f"{step.size}")
            steps.append(ResizePad(size))
            replaced = True
        else:
            steps.append(step)
    if not replaced:
        raise ValueError("letterbox_transforms: fast-reid's transform pipeline has no Resize step to replace")
    return T.Compose(steps)
