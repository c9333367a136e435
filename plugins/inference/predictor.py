"""``Predictor``: config + weights -> features, for every model this package trains.

The model is built exactly as ``tools/train_net.py --eval-only`` builds it (the trainer named by
``PLUGINS.TRAINER``: ``TRAINER_REGISTRY.get(...).build_model(cfg)``, no hub download) and its weights are loaded
strictly by ``plugins.engine.eval_only.load_eval_weights``. Inputs are what the model takes, as batch keys
(``plugins/data/batch.py``): ``images`` (0-255), ``modalities`` (RGB/NI/TI), ``text_tokens``, ``attributes``; the
model's own eval forward maps them to features, so this file knows no method.

Images are read and transformed by the one loader helper (``plugins.engine.loaders.make_test_loader``: fast-reid's
test transforms of the config + the ``PLUGINS.DATA`` extras), and ``TEST.FLIP.ENABLED`` averages the features of
the flipped ``images`` as fast-reid's ``inference_on_dataset`` means to, so features equal the evaluator's.
(Host caveat: fast-reid's loop flips ``inputs["images"]`` after ``preprocess_image`` has normalised them in place,
so with ``TEST.FLIP`` its second pass saw normalised images normalised again; ``plugins.compat.meta_arch`` patches
that, and the predictor flips its own copy of the raw images whatever the model's ``preprocess_image`` does.)
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, List, Mapping, Optional, Sequence

import torch

from ..data.batch import IMAGES, TEXT_CONTEXT_LENGTH, TEXT_TOKENS
from ..engine.eval_only import load_eval_weights
from ..engine.loaders import make_test_loader
from ..registry import TRAINER_REGISTRY

__all__ = ["Predictor", "to_device"]

logger = logging.getLogger("fastreid." + __name__)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch on ``device``, float ones (images, modalities) always as fresh copies:
    fast-reid's unpatched ``preprocess_image`` normalises ``images`` in place, which must touch neither the caller's
    tensors nor the raw images a flipped second pass needs. Other values (paths, string camids) unchanged."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True, copy=batch.is_floating_point())
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _resolve_device(requested: Optional[str], cfg_device: str) -> torch.device:
    name = str(requested or cfg_device or "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        if requested:
            raise RuntimeError(f"device '{requested}' was asked for but CUDA is not available")
        logger.info("MODEL.DEVICE %s: CUDA is not available, predicting on cpu", cfg_device)
        name = "cpu"
    return torch.device(name)


class Predictor:
    """Features of images, modality sets, captions and attribute-annotated images, from one trained model.

    Args:
        cfg: the model's config (``plugins.config.setup_cfg``); not modified.
        weights: checkpoint (``{"model": state_dict}`` or a state dict, ``.pth`` or safetensors); ``None``:
            ``cfg.MODEL.WEIGHTS``. May be empty only for a trainer that rebuilds its trained model from
            ``OUTPUT_DIR`` (``BUILDS_TRAINED_MODEL``, e.g. SAGE).
        device: "cpu", "cuda", "cuda:1"...; ``None``: ``MODEL.DEVICE`` (cpu when CUDA is absent).
        amp: autocast (float16 on CUDA, bfloat16 on CPU); features are returned as float32 either way.
        batch_size: images per forward; 0: ``TEST.IMS_PER_BATCH``.
        num_workers: loader workers; ``None``: ``DATALOADER.NUM_WORKERS``.
    """

    def __init__(self, cfg, weights: Optional[str] = None, *, device: Optional[str] = None, amp: bool = False,
                 batch_size: int = 0, num_workers: Optional[int] = None):
        cfg = cfg.clone()
        cfg.defrost()
        self.device = _resolve_device(device, cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = str(self.device)
        cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint holds every weight: no hub download
        weights = str(cfg.MODEL.WEIGHTS if weights is None else weights)
        cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        self.cfg = cfg
        trainer_cls = TRAINER_REGISTRY.get(cfg.PLUGINS.TRAINER)
        if not weights and not getattr(trainer_cls, "BUILDS_TRAINED_MODEL", False):
            raise ValueError(f"Predictor needs weights (a trained checkpoint) for PLUGINS.TRAINER "
                             f"{cfg.PLUGINS.TRAINER}: without them a randomly initialised model would be used")
        model = trainer_cls.build_model(cfg)
        if weights:
            load_eval_weights(model, weights)
        self.model = model.to(self.device).eval()
        self.amp = bool(amp)
        self.flip = bool(cfg.TEST.FLIP.ENABLED)
        self.batch_size = int(batch_size or cfg.TEST.IMS_PER_BATCH)
        self.num_workers = num_workers
        self._tokenizer = None

    # ---- one batch ------------------------------------------------------------------------------------------
    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """A contract batch -> (B, D) float32 features on the CPU (``images`` -> image features, a batch of only
        ``text_tokens`` -> text features). ``TEST.FLIP.ENABLED``: the mean with the features of the flipped
        ``images`` (fast-reid flips ``images`` only, not the other modalities). The model gets copies of the
        images, so ``batch`` is left as it was."""
        with self._autocast():
            feats = self.model(to_device(batch, self.device)).float()
            if self.flip and IMAGES in batch:
                flipped = dict(batch)
                flipped[IMAGES] = batch[IMAGES].flip(dims=[3])  # the raw images, flipped (a copy)
                feats = (feats + self.model(to_device(flipped, self.device)).float()) / 2
        return feats.cpu()

    # ---- many items -----------------------------------------------------------------------------------------
    def image_cfg(self):
        """The config the image loader reads: captions are not read for image features (a text-image model's
        eval forward takes ``images`` when present), so a plain folder of images needs none."""
        if not (self.cfg.get("PLUGINS") and self.cfg.PLUGINS.get("DATA") and self.cfg.PLUGINS.DATA.TEXT):
            return self.cfg
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.PLUGINS.DATA.TEXT = False
        cfg.freeze()
        return cfg

    def embed_items(self, items: Sequence[tuple]) -> torch.Tensor:
        """Reader items ``(img_path, pid, camid[, extras])`` -> (N, D) image features, in order. ``extras`` carry
        the other inputs the config asks for (``PLUGINS.DATA``: modalities, attributes)."""
        if not items:
            return torch.zeros(0, 0)
        loader, _ = make_test_loader(self.image_cfg(), list(items), batch_size=self.batch_size,
                                     num_workers=self.num_workers)
        feats = [self(batch) for batch in loader]
        out = torch.cat(feats)
        if out.shape[0] != len(items):  # InferenceSampler shards by rank: one process must see every item
            raise RuntimeError(f"got {out.shape[0]} features for {len(items)} items (run on one process)")
        return out

    def embed_images(self, paths: Sequence[str], camids: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Image files -> (N, D) features. ``camids``: camera indices for camera-aware (SIE) models; default 0."""
        cams = list(camids) if camids is not None else [0] * len(paths)
        return self.embed_items([(str(p), 0, int(c)) for p, c in zip(paths, cams)])

    def tokenize(self, sentences: Sequence[str]) -> torch.Tensor:
        """Captions -> (N, L) int64 tokens with the project's one CLIP tokenizer (``PLUGINS.DATA``'s length)."""
        if self._tokenizer is None:
            from ..data.mapper import clip_tokenizer, data_options

            self._tokenizer = clip_tokenizer(int(data_options(self.cfg).get("TEXT_CONTEXT_LENGTH",
                                                                             TEXT_CONTEXT_LENGTH)))
        return torch.as_tensor(self._tokenizer(list(sentences))).long()

    def embed_text(self, sentences: Sequence[str]) -> torch.Tensor:
        """Captions -> (N, E) text features (text-image models: their eval forward maps ``text_tokens``)."""
        tokens = self.tokenize(sentences)
        out: List[torch.Tensor] = []
        for start in range(0, tokens.shape[0], self.batch_size):
            try:
                out.append(self({TEXT_TOKENS: tokens[start:start + self.batch_size]}))
            except (KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"{self.cfg.MODEL.META_ARCHITECTURE} does not map 'text_tokens' to features in "
                                 f"eval mode (not a text-image model?): {err}") from err
        return torch.cat(out)

    @property
    def modality_names(self) -> tuple:
        """The modalities the config's loader reads (``PLUGINS.DATA.MODALITIES``); () for single-image models."""
        from ..data.mapper import data_options

        return tuple(data_options(self.cfg).MODALITIES)

