"""``ExtrasDataset``: fast-reid's ``CommDataset`` that also maps a reader's extras to the batch contract keys.

Readers yield ``(img_path, pid, camid)`` or ``(img_path, pid, camid, extras)`` (``datasets/base.py``). This
dataset returns fast-reid's ``{"images", "targets", "camids", "img_paths"}`` (same reading, transform and
relabelling as ``CommDataset``) plus, when asked for and carried by the items (``batch.py`` for shapes):

- ``modalities``: ``extras["modalities"]`` ``{name: path}`` (``multimodal_base``), each file read with fast-reid's
  ``read_image`` as RGB (single-channel NIR / TIR files are replicated), or cropped out of one tiled file
  (``extras["tiles"]``, RGBNT100), then transformed. For a tiled item ``images`` is its RGB tile.
- ``text_tokens``: ``extras["caption"]`` (one string), or one of ``extras["captions"]`` (a list; gallery items of
  the text readers): ``caption_pick="first"`` takes the first, ``"random"`` draws one per access from python's
  ``random`` (seeded per DataLoader worker by torch). ``build_extras_dataset`` uses "random" for training
  loaders (``PLUGINS.DATA.TRAIN_CAPTION``) and "first" for test loaders, so evaluation is deterministic.
- ``attributes``: ``extras["attributes"]`` (ints; the readers' ``UNKNOWN`` -1 or ``None`` = missing) as an int64
  vector, ``MISSING_ATTRIBUTE`` where missing; an item without attributes gets a vector of ``MISSING_ATTRIBUTE``.

Which keys a dataset yields is decided once, at construction, so that every sample has the same keys (fast-reid's
``fast_batch_collator`` takes the keys of a batch's first sample): items that do not carry what was asked for
raise there, naming the item. Items without extras, with the defaults, yield exactly ``CommDataset``'s dict.

Synchronised transforms (``sync_modalities=True``): the global RNG states that transforms draw from (python
``random``, ``numpy.random``, torch's default CPU generator) are captured before ``images`` is transformed and
restored before each modality is, so every image of a sample gets the same draws: the same flip, crop offset,
erasing box, colour jitter. Chosen over a joint transform because it works unchanged with every fast-reid and
torchvision transform and any per-modality pipeline; it needs the images of a sample to have the same size (as
the multi-modal datasets do), and transforms that keep state between calls (fast-reid's ``RandomPatch`` patch
pool) are not synchronised by it. With ``sync_modalities=False`` each image gets independent draws.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.data.common import CommDataset
from fastreid.data.data_utils import read_image
from fastreid.data.transforms import build_transforms

from .batch import ATTRIBUTES, MISSING_ATTRIBUTE, MODALITIES, TEXT_CONTEXT_LENGTH, TEXT_TOKENS
from .config import add_data_config

__all__ = ["ExtrasDataset", "build_extras_dataset", "data_options", "clip_tokenizer", "CAPTION_PICKS"]

CAPTION_PICKS = ("first", "random")
_PRIMARY_MODALITY = "RGB"  # the tile of a tiled multi-modal file that ``images`` holds

Tokenize = Callable[[list], torch.Tensor]
Transform = Callable[[Any], Any]


def _extras(item: Sequence) -> Optional[Mapping]:
    return item[3] if len(item) > 3 and isinstance(item[3], Mapping) else None


def _rng_state():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_state(state) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


class ExtrasDataset(CommDataset):
    """``CommDataset`` (same constructor arguments, relabelling and output keys) + the extras keys.

    Args:
        img_items: reader items, 3-tuples or 4-tuples with an extras dict (both may be mixed).
        transform: applied to ``images`` (and to every modality unless ``modality_transforms`` says otherwise).
        relabel: map pids and camids to 0.. in sorted order, as ``CommDataset``.
        modalities: names to load from ``extras["modalities"]``; ``None``: those of the first item carrying
            any (every item must then carry them); ``()``: no ``modalities`` key.
        modality_transforms: one transform for every modality, or ``{name: transform}`` (a name not in the
            mapping uses ``transform``); ``None``: ``transform``.
        sync_modalities: one random draw for ``images`` and all modalities of a sample (see module docstring);
            ``False``: independent draws.
        tokenize: ``list[str] -> (n, L) int64`` tensor (e.g. ``clip_tokenizer()``); ``None``: no
            ``text_tokens`` key. When given, every item must carry ``caption`` or ``captions``.
        caption_pick: which caption of a ``captions`` list: ``"first"`` or ``"random"`` (per access).
        attributes: yield ``attributes`` when any item carries them.
    """

    def __init__(self, img_items, transform: Optional[Transform] = None, relabel: bool = True, *,
                 modalities: Optional[Sequence[str]] = None,
                 modality_transforms: Union[Transform, Mapping[str, Transform], None] = None,
                 sync_modalities: bool = True, tokenize: Optional[Tokenize] = None, caption_pick: str = "first",
                 attributes: bool = True):
        super().__init__(img_items, transform, relabel)
        if caption_pick not in CAPTION_PICKS:
            raise ValueError(f"caption_pick must be one of {CAPTION_PICKS}, got {caption_pick!r}")
        self.sync_modalities = bool(sync_modalities)
        self.tokenize = tokenize
        self.caption_pick = caption_pick
        self.modality_names = self._check_modalities(modalities)
        if isinstance(modality_transforms, Mapping):
            self.modality_transforms = {m: modality_transforms.get(m, transform) for m in self.modality_names}
        else:
            chosen = transform if modality_transforms is None else modality_transforms
            self.modality_transforms = {m: chosen for m in self.modality_names}
        if tokenize is not None:
            self._check_captions()
        self.attribute_table = self._attribute_table() if attributes else None

    # ---- construction-time checks: every sample gets the same keys -------------------------------------------
    def _where(self, index: int) -> str:
        return f"item {index} ('{self.img_items[index][0]}')"

    def _check_modalities(self, wanted: Optional[Sequence[str]]) -> tuple:
        carried = [(k, _extras(it).get("modalities")) for k, it in enumerate(self.img_items)
                   if _extras(it) is not None and _extras(it).get("modalities")]
        if wanted is None:
            if not carried:
                return ()
            names = tuple(carried[0][1])
        else:
            names = tuple(wanted)
            if not names:
                return ()
        have = {k: mods for k, mods in carried}
        for k in range(len(self.img_items)):
            mods = have.get(k)
            if mods is None:
                raise ValueError(f"{self._where(k)} carries no extras['modalities'] but modalities {names} are "
                                 f"asked for (every sample of a batch needs them)")
            missing = [m for m in names if m not in mods]
            if missing:
                raise KeyError(f"{self._where(k)} has no modality {missing} (it has {sorted(mods)})")
        return names

    def _check_captions(self) -> None:
        for k, item in enumerate(self.img_items):
            extras = _extras(item) or {}
            caption, captions = extras.get("caption"), extras.get("captions")
            if isinstance(caption, str):
                continue
            if isinstance(captions, (list, tuple)) and captions and all(isinstance(c, str) for c in captions):
                continue
            raise ValueError(f"{self._where(k)} has no extras['caption'] string or non-empty extras['captions'] "
                             f"list, but a tokenizer was given (text_tokens for every sample)")

    def _attribute_table(self) -> Optional[torch.Tensor]:
        """(N, A) int64, or None when no item carries attributes."""
        rows = [(_extras(it) or {}).get("attributes") for it in self.img_items]
        first = next((k for k, r in enumerate(rows) if r is not None), None)
        if first is None:
            return None
        size = len(rows[first])
        table = torch.full((len(rows), size), MISSING_ATTRIBUTE, dtype=torch.int64)
        for k, row in enumerate(rows):
            if row is None:
                continue
            if len(row) != size:
                raise ValueError(f"{self._where(k)} has {len(row)} attributes, {self._where(first)} has {size}")
            values = [MISSING_ATTRIBUTE if v is None else v for v in row]
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= MISSING_ATTRIBUTE
                       for v in values):
                raise ValueError(f"{self._where(k)}: attributes {tuple(row)} must be ints >= 0, or "
                                 f"{MISSING_ATTRIBUTE} / None for missing")
            table[k] = torch.as_tensor([int(v) for v in values], dtype=torch.int64)
        return table

    # ---- per sample ------------------------------------------------------------------------------------------
    def _read(self, item: Sequence, extras: Optional[Mapping]):
        """(image, {modality: PIL image}) before transforms."""
        tiles = extras.get("tiles") if extras is not None else None
        if not tiles:
            image = read_image(item[0])
            mods = {m: read_image(extras["modalities"][m], "RGB") for m in self.modality_names}
            return image, mods
        wholes = {}

        def crop(path: str, name: str):
            if path not in wholes:
                whole = read_image(path, "RGB")
                expected = tuple(extras.get("tiled_size") or whole.size)
                if whole.size != expected:
                    raise ValueError(f"'{path}' is {whole.size[0]}x{whole.size[1]} (w x h); its tiled modalities "
                                     f"need {expected[0]}x{expected[1]}")
                wholes[path] = whole
            return wholes[path].crop(tuple(tiles[name]))

        primary = _PRIMARY_MODALITY if _PRIMARY_MODALITY in tiles else next(iter(tiles))
        image = crop(item[0], primary)
        return image, {m: crop(extras["modalities"][m], m) for m in self.modality_names}

    def _caption(self, extras: Mapping) -> str:
        caption = extras.get("caption")
        if isinstance(caption, str):
            return caption
        captions = extras["captions"]
        return captions[0] if self.caption_pick == "first" else captions[random.randrange(len(captions))]

    def __getitem__(self, index: int) -> dict:
        item = self.img_items[index]
        img_path, pid, camid = item[0], item[1], item[2]
        extras = _extras(item)
        image, mods = self._read(item, extras)
        state = _rng_state() if self.sync_modalities and mods else None
        if self.transform is not None:
            image = self.transform(image)
        for name in self.modality_names:
            if state is not None:
                _set_rng_state(state)
            tf = self.modality_transforms[name]
            mods[name] = tf(mods[name]) if tf is not None else mods[name]
        if self.relabel:
            pid = self.pid_dict[pid]
            camid = self.cam_dict[camid]
        out = {"images": image, "targets": pid, "camids": camid, "img_paths": img_path}
        if self.modality_names:
            out[MODALITIES] = mods
        if self.tokenize is not None:
            tokens = torch.as_tensor(self.tokenize([self._caption(extras)]))
            out[TEXT_TOKENS] = (tokens[0] if tokens.dim() == 2 else tokens).long()
        if self.attribute_table is not None:
            out[ATTRIBUTES] = self.attribute_table[index].clone()
        return out


# ---- config translation -----------------------------------------------------------------------------------------
def data_options(cfg) -> CfgNode:
    """``cfg.PLUGINS.DATA``, or its defaults (``add_data_config``) when the config has no such node."""
    plugins = cfg.get("PLUGINS") if cfg is not None else None
    if plugins is not None and "DATA" in plugins:
        return plugins.DATA
    return add_data_config(CfgNode()).PLUGINS.DATA


def clip_tokenizer(context_length: int = TEXT_CONTEXT_LENGTH) -> Tokenize:
    """The project's one CLIP tokenizer (``plugins.modeling.backbones.clip``, open_clip's BPE):
    ``list[str] -> (n, context_length)`` int64. Imported here, not at module level: ``plugins.data`` is imported
    before ``plugins.modeling``."""
    from ..modeling.backbones.clip.tokenizer import get_tokenizer

    return get_tokenizer(int(context_length))


def build_extras_dataset(cfg, items, *, is_train: bool, relabel: bool,
                         transform: Optional[Transform] = None) -> ExtrasDataset:
    """The one config translation: ``ExtrasDataset`` over ``items`` with fast-reid's train/test transforms of
    ``cfg`` (or ``transform``) and the ``PLUGINS.DATA`` options (``plugins/data/config.py``)."""
    opts = data_options(cfg)
    if transform is None:
        transform = build_transforms(cfg, is_train=is_train)
    pick = str(opts.TRAIN_CAPTION) if is_train else "first"
    if pick not in CAPTION_PICKS:
        raise ValueError(f"PLUGINS.DATA.TRAIN_CAPTION must be one of {CAPTION_PICKS}, got {pick!r}")
    tokenize = clip_tokenizer(int(opts.TEXT_CONTEXT_LENGTH)) if opts.TEXT else None
    return ExtrasDataset(items, transform, relabel, modalities=tuple(opts.MODALITIES),
                         sync_modalities=bool(opts.SYNC_MODALITY_TRANSFORMS), tokenize=tokenize,
                         caption_pick=pick, attributes=bool(opts.ATTRIBUTES))
