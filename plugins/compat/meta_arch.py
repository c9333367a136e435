"""Runtime patch for fast-reid's meta-architectures.

``flip_test_normalisation``: ``Baseline.preprocess_image`` (inherited by ``Distiller``, and ``MGN``'s own copy)
normalises the batch IN PLACE (``images.sub_(mean).div_(std)``). ``inference_on_dataset`` with
``TEST.FLIP.ENABLED`` then flips the already-normalised tensor and feeds it to the model again, which normalises it
a second time: the flipped half of every test feature is computed on ``((x - m) / s - m) / s``. The patched
``preprocess_image`` returns a new tensor and leaves the batch untouched (one extra copy of the batch).
"""
from __future__ import annotations

import inspect

from .base import Patch

_CLASSES = (("fastreid.modeling.meta_arch.baseline", "Baseline"), ("fastreid.modeling.meta_arch.mgn", "MGN"))
HOST_PREPROCESS = {}  # class name -> the host's own preprocess_image, kept for the failure test


def _classes():
    import importlib

    return [getattr(importlib.import_module(module), name) for module, name in _CLASSES]


def normalises_in_place(fn) -> bool:
    """Feature test: ``fn`` (a ``preprocess_image``) writes the normalisation into its input."""
    if getattr(fn, "_plugins_out_of_place", False):
        return False
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return "images.sub_(" in source


def preprocess_image_out_of_place(self, batched_inputs):
    """``(images - pixel_mean) / pixel_std`` as a new tensor; the input batch is not modified."""
    import torch

    if isinstance(batched_inputs, dict):
        images = batched_inputs["images"]
    elif isinstance(batched_inputs, torch.Tensor):
        images = batched_inputs
    else:
        raise TypeError(f"batched_inputs must be a dict or a torch.Tensor, got {type(batched_inputs).__name__}")
    return (images - self.pixel_mean) / self.pixel_std


preprocess_image_out_of_place._plugins_out_of_place = True


def _needed() -> bool:
    return any(normalises_in_place(cls.preprocess_image) for cls in _classes())


def _apply() -> None:
    for cls in _classes():
        if normalises_in_place(cls.preprocess_image):
            HOST_PREPROCESS[cls.__name__] = cls.preprocess_image
            cls.preprocess_image = preprocess_image_out_of_place


PATCHES = [Patch(name="flip_test_normalisation",
                 why="TEST.FLIP normalises the flipped batch twice (preprocess_image works in place)",
                 needed=_needed, apply=_apply, stage="runtime")]
