"""The batch contract: what every plugin loader yields and every plugin model reads.

A batch is fast-reid's dict (``CommDataset`` + ``fast_batch_collator``) plus optional keys; B = batch size:

==================  ==============================  ===========================================================
key                 value                           meaning
==================  ==============================  ===========================================================
``images``          float (B, 3, H, W), 0-255       the item's image (``item[0]``; a tiled multi-modal file gives
                                                    its RGB tile), NOT normalised: the model normalises it with
                                                    its config's ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` (fast-reid's
                                                    ``preprocess_image``, which does so in place)
``targets``         int64 (B,)                      identity labels (relabelled 0..C-1 in training loaders)
``camids``          int64 (B,), or list[str] of B   camera ids; strings when a loader keeps fast-reid's train
                                                    camids without relabelling
``img_paths``       list[str] of B                  path of each ``images`` file
``modalities``      {name: float (B, 3, H, W)}      optional; other spectra of the same sample (RGBNT201 ...:
                                                    ``RGB``, ``NI``, ``TI``), 0-255 like ``images``
``text_tokens``     int64 (B, L)                    optional; tokenizer ids of one caption per item (open_clip:
                                                    L = 77, start 49406, end 49407, padding 0)
``attributes``      int64 (B, A)                    optional; 0-based attribute values, ``MISSING_ATTRIBUTE`` (-1)
                                                    where an item has no annotation
==================  ==============================  ===========================================================

Other keys may be present and are ignored by consumers that do not know them. In eval mode a model maps a batch
to features as fast-reid's do (``model(batch)``): ``images`` to image features, ``text_tokens`` to text features,
so one predictor and one evaluator serve every method. ``plugins.data.mapper.ExtrasDataset`` produces these keys.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

IMAGES = "images"
TARGETS = "targets"
CAMIDS = "camids"
IMG_PATHS = "img_paths"
MODALITIES = "modalities"
TEXT_TOKENS = "text_tokens"
ATTRIBUTES = "attributes"

BASE_KEYS = (IMAGES, TARGETS, CAMIDS, IMG_PATHS)  # fast-reid's CommDataset keys: always present
EXTRA_KEYS = (MODALITIES, TEXT_TOKENS, ATTRIBUTES)  # present when the loader was asked for them

MISSING_ATTRIBUTE = -1  # value of an attribute an item has no annotation for
TEXT_CONTEXT_LENGTH = 77  # open_clip's (and CLIP's) token context length

__all__ = ["IMAGES", "TARGETS", "CAMIDS", "IMG_PATHS", "MODALITIES", "TEXT_TOKENS", "ATTRIBUTES", "BASE_KEYS",
           "EXTRA_KEYS", "MISSING_ATTRIBUTE", "TEXT_CONTEXT_LENGTH", "BatchContractError", "validate_batch"]


class BatchContractError(ValueError):
    """A batch breaks the contract; the message starts with ``batch['<key>']``."""


def _fail(key, message: str) -> None:
    """``key``: a contract key, or ``(key, sub_key)`` for a modality."""
    where = f"batch[{key[0]!r}][{key[1]!r}]" if isinstance(key, tuple) else f"batch[{key!r}]"
    raise BatchContractError(f"{where}: {message}")


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def _check_images(key, value: Any, batch_size: int | None, check_range: bool) -> int:
    if not torch.is_tensor(value) or value.dim() != 4 or value.shape[1] != 3 or not value.is_floating_point():
        _fail(key, f"expected a float (B, 3, H, W) tensor, got {_describe(value)}")
    if batch_size is not None and value.shape[0] != batch_size:
        _fail(key, f"holds {value.shape[0]} images for a batch of {batch_size} (from 'images')")
    if check_range and value.numel():
        low, high = float(value.min()), float(value.max())
        if low < 0 or high > 255:
            _fail(key, f"values span [{low:.3g}, {high:.3g}]; expected raw pixels in [0, 255] (already "
                       f"normalised? the model normalises)")
    return int(value.shape[0])


def _check_long(key: str, value: Any, batch_size: int, dims: int, what: str) -> None:
    if not torch.is_tensor(value) or value.dtype != torch.int64 or value.dim() != dims:
        _fail(key, f"expected an int64 {what} tensor, got {_describe(value)}")
    if value.shape[0] != batch_size:
        _fail(key, f"has {value.shape[0]} rows for a batch of {batch_size} (from 'images')")


def _check_strings(key: str, value: Any, batch_size: int) -> None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        _fail(key, f"expected a list of {batch_size} strings, got {_describe(value)}")
    if len(value) != batch_size:
        _fail(key, f"has {len(value)} entries for a batch of {batch_size} (from 'images')")


def validate_batch(batch: Mapping[str, Any], *, required: Iterable[str] = BASE_KEYS,
                   check_range: bool = True) -> None:
    """Check ``batch`` against the contract above; raise ``BatchContractError`` naming the key at fault.

    Args:
        batch: a collated batch (``fast_batch_collator`` output).
        required: keys that must be present (default: fast-reid's four); optional keys are checked when present.
        check_range: also check that ``images`` and ``modalities`` hold raw 0-255 pixels (one pass over them).
    """
    if not isinstance(batch, Mapping):
        raise BatchContractError(f"a batch must be a dict of the contract keys, got {type(batch).__name__}")
    for key in required:
        if key not in batch:
            _fail(key, f"missing (batch keys: {sorted(batch)})")
    if IMAGES not in batch:
        _fail(IMAGES, f"missing: every batch needs it to define the batch size (batch keys: {sorted(batch)})")
    size = _check_images(IMAGES, batch[IMAGES], None, check_range)
    if TARGETS in batch:
        _check_long(TARGETS, batch[TARGETS], size, 1, "(B,)")
    if CAMIDS in batch:
        camids = batch[CAMIDS]
        if torch.is_tensor(camids):
            _check_long(CAMIDS, camids, size, 1, "(B,)")
        else:
            _check_strings(CAMIDS, camids, size)
    if IMG_PATHS in batch:
        _check_strings(IMG_PATHS, batch[IMG_PATHS], size)
    if MODALITIES in batch:
        mods = batch[MODALITIES]
        if not isinstance(mods, Mapping) or not mods:
            _fail(MODALITIES, f"expected a non-empty dict {{name: (B, 3, H, W) tensor}}, got {_describe(mods)}")
        for name, value in mods.items():
            _check_images((MODALITIES, name), value, size, check_range)
    if TEXT_TOKENS in batch:
        tokens = batch[TEXT_TOKENS]
        _check_long(TEXT_TOKENS, tokens, size, 2, "(B, L)")
        if tokens.numel() and int(tokens.min()) < 0:
            _fail(TEXT_TOKENS, "holds negative token ids")
    if ATTRIBUTES in batch:
        attrs = batch[ATTRIBUTES]
        _check_long(ATTRIBUTES, attrs, size, 2, "(B, A)")
        if attrs.numel() and int(attrs.min()) < MISSING_ATTRIBUTE:
            _fail(ATTRIBUTES, f"holds {int(attrs.min())}; values are >= 0, or {MISSING_ATTRIBUTE} for missing")
