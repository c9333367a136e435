"""``CLIPReIDPipeline``: one config runs CLIP-ReID end to end (``PLUGINS.TRAINER: CLIPReIDPipeline``): the stages
of ``plugins.engine.clipreid_pipeline`` plus the ablation rows of ``CLIPREID.BASELINES``.

    OUTPUT_DIR/
      stage1/ stage2/         CLIP-ReID (prompts; image encoder)
      stage2_no_i2t/          baseline "no_i2t": stage 2 without the image-to-text loss
      image_only/             baseline "image_only": fast-reid Baseline on the CLIP image tower
      results.json|md|csv     every row on DATASETS.TESTS[0]: mAP, R-1, R-5, R-10

A stage folder holding ``done.json`` is complete and skipped; an interrupted stage resumes from its last
checkpoint; delete a folder to redo it (plugins.engine.stages).
"""
from __future__ import annotations

from typing import Dict

from fastreid.engine import DefaultTrainer

from ..engine.clipreid_pipeline import CLIPReIDStagePipeline
from ..engine.clipreid_trainers import CLIPReIDTrainer
from ..engine.stages import run_stage
from ..modeling.backbones.clip import clip_width
from ..registry import TRAINER_REGISTRY
from .config import BASELINES

__all__ = ["CLIPReIDPipeline", "image_only_cfg"]


def image_only_cfg(cfg):
    """The "image_only" baseline's config: fast-reid's Baseline (CameraAwareBaseline, for SIE) on the CLIP image
    tower's CLS feature, one BNNeck, label-smoothed CE + batch-hard triplet with CLIP-ReID's epsilon and margin."""
    c = cfg.clone()
    c.defrost()
    c.MODEL.META_ARCHITECTURE = "CameraAwareBaseline"
    c.MODEL.BACKBONE.NAME = "build_clip_backbone"
    c.MODEL.BACKBONE.CLIP.FEATURE = "cls"
    c.MODEL.BACKBONE.FEAT_DIM = clip_width(c.MODEL.BACKBONE.CLIP.NAME)
    c.MODEL.HEADS.NAME = "EmbeddingHead"
    c.MODEL.HEADS.NECK_FEAT = "before" if cfg.CLIPREID.NECK_FEAT == "before" else "after"
    c.MODEL.HEADS.POOL_LAYER = "Identity"
    c.MODEL.HEADS.CLS_LAYER = "Linear"
    c.MODEL.HEADS.WITH_BNNECK = True
    c.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    c.MODEL.LOSSES.CE.EPSILON = float(cfg.CLIPREID.LABEL_SMOOTH)
    c.MODEL.LOSSES.CE.SCALE = 1.0
    c.MODEL.LOSSES.TRI.MARGIN = float(cfg.CLIPREID.TRIPLET_MARGIN)
    c.MODEL.LOSSES.TRI.NORM_FEAT = False
    c.MODEL.LOSSES.TRI.HARD_MINING = True
    c.MODEL.LOSSES.TRI.SCALE = 1.0
    c.merge_from_list(list(cfg.CLIPREID.BASELINE_OPTS))
    c.freeze()
    return c


@TRAINER_REGISTRY.register()
class CLIPReIDPipeline(CLIPReIDStagePipeline):
    """Stage 1 -> stage 2 (+ the baselines of ``CLIPREID.BASELINES``), then the results table."""

    def __init__(self, cfg):
        unknown = [b for b in cfg.CLIPREID.BASELINES if b not in BASELINES]
        if unknown:
            raise ValueError(f"CLIPREID.BASELINES has unknown entries {unknown}; choose from {list(BASELINES)}")
        super().__init__(cfg)

    def train(self) -> Dict[str, Dict]:
        self.train_clipreid()
        if "no_i2t" in self.cfg.CLIPREID.BASELINES:
            c = self.stage_cfg("stage2_no_i2t", self.cfg.CLIPREID.STAGE2_OPTS,
                               **{"CLIPREID.PROMPTS": "", "CLIPREID.I2T_WEIGHT": 0.0})
            self.record("CLIP-ReID w/o i2t loss", "ablation", run_stage("stage 2 without i2t", c, CLIPReIDTrainer))
        if "image_only" in self.cfg.CLIPREID.BASELINES:
            c = image_only_cfg(self.stage_cfg("image_only", self.cfg.CLIPREID.STAGE2_OPTS))
            self.record("image-only baseline", "ablation", run_stage("image-only baseline", c, DefaultTrainer))
        return self.report()
