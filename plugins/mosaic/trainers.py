"""``MoSAICTrainer`` (TRAINER_REGISTRY): fast-reid's loop training MoSAIC's experts on a CLIP-ReID model.

Start point: ``MODEL.WEIGHTS`` = a CLIP-ReID stage-2 checkpoint (the pipeline's ``stage2/model_final.pth``, or an
official one converted by tools/convert_weights.py); the experts are not in it and start at zero (the model then
equals CLIP-ReID). Prompts: ``CLIPREID.PROMPTS`` (stage 1's file) or the ones inside ``MODEL.WEIGHTS``; the text
feature of every identity is computed once after the weights are loaded and frozen (the i2t loss). Loaders carry
``attributes`` (``plugins.engine.loaders``; ``PLUGINS.DATA.ATTRIBUTES`` must be True).
"""
from __future__ import annotations

import logging

from fastreid.engine import DefaultTrainer
from fastreid.utils import comm

from ..engine.clipreid_trainers import CLIPReIDTrainer, text_feature_bank
from ..engine.loaders import make_dataset_test_loader, make_train_loader
from ..engine.models import require_meta_arch
from ..engine.pseudo_label_hook import unwrap_model
from ..registry import TRAINER_REGISTRY
from .meta_arch import MoSAIC

__all__ = ["MoSAICTrainer", "check_mosaic_cfg"]

logger = logging.getLogger("fastreid." + __name__)


def check_mosaic_cfg(cfg) -> None:
    """Fail fast on a config MoSAIC cannot train / evaluate with."""
    if cfg.MODEL.META_ARCHITECTURE != "MoSAIC":
        raise ValueError(f"MoSAIC trains MODEL.META_ARCHITECTURE MoSAIC, got {cfg.MODEL.META_ARCHITECTURE!r}")
    if not cfg.PLUGINS.DATA.ATTRIBUTES:
        raise ValueError("MoSAIC routes on batch['attributes']: set PLUGINS.DATA.ATTRIBUTES True")


@TRAINER_REGISTRY.register()
class MoSAICTrainer(DefaultTrainer):
    """Only the experts (+ attribute head) train; CLIP-ReID's stage-2 losses (see the module docstring)."""

    def __init__(self, cfg):
        check_mosaic_cfg(cfg)
        if float(cfg.CLIPREID.I2T_WEIGHT) > 0 and not (cfg.CLIPREID.PROMPTS or cfg.MODEL.WEIGHTS):
            raise ValueError("the i2t loss needs learned prompts: set CLIPREID.PROMPTS or MODEL.WEIGHTS (a CLIP-ReID "
                             "checkpoint), or CLIPREID.I2T_WEIGHT 0")
        super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg) -> MoSAIC:
        model = require_meta_arch(CLIPReIDTrainer.build_model(cfg), MoSAIC, "MoSAICTrainer")
        if comm.is_main_process():
            logger.info(f"MoSAIC experts in the last {len(model.banks)} blocks; {model.schema.summary()}\n"
                        f"switched on: {list(model.oracle.included_names())}")
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        return make_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return make_dataset_test_loader(cfg, dataset_name)

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        model = unwrap_model(self.model)
        if model.i2t_weight > 0 and model.num_classes > 0:  # after the weights: the prompts may come with them
            model.set_text_features(text_feature_bank(model, amp=bool(self.cfg.CLIPREID.STAGE1.AMP)))
            logger.info(f"MoSAIC: text features of {model.num_classes} identities computed once (frozen)")
