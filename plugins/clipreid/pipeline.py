"""``CLIPReIDPipeline``: one config runs CLIP-ReID end to end (``PLUGINS.TRAINER: CLIPReIDPipeline``).

    OUTPUT_DIR/
      stage1/                 prompt learning: image_features.safetensors (cache), prompt_learner.safetensors
      stage2/                 image-encoder fine-tuning with the learned prompts (fast-reid checkpoints)
      stage2_no_i2t/          baseline "no_i2t": stage 2 without the image-to-text loss
      image_only/             baseline "image_only": fast-reid Baseline on the CLIP image tower
      results.json|md|csv     every row on DATASETS.TESTS[0]: mAP, R-1, R-5, R-10

A stage folder holding ``done.json`` is complete and skipped; an interrupted stage resumes from its last
checkpoint; delete a folder to redo it (plugins.engine.stages).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List

from fastreid.engine import DefaultTrainer
from fastreid.utils import comm

from ..engine.results import ResultsTable
from ..modeling.backbones.clip import clip_width
from ..engine.stages import run_stage
from ..registry import TRAINER_REGISTRY
from .config import BASELINES
from .trainers import PROMPTS_FILE, CLIPReIDPromptTrainer, CLIPReIDTrainer

__all__ = ["CLIPReIDPipeline", "image_only_cfg"]

logger = logging.getLogger("fastreid." + __name__)


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
class CLIPReIDPipeline:
    """Stage 1 -> stage 2 (+ the baselines of ``CLIPREID.BASELINES``), then the results table."""

    def __init__(self, cfg):
        unknown = [b for b in cfg.CLIPREID.BASELINES if b not in BASELINES]
        if unknown:
            raise ValueError(f"CLIPREID.BASELINES has unknown entries {unknown}; choose from {list(BASELINES)}")
        if cfg.MODEL.META_ARCHITECTURE != "CLIPReID":
            raise ValueError(f"CLIPReIDPipeline trains MODEL.META_ARCHITECTURE CLIPReID, got "
                             f"{cfg.MODEL.META_ARCHITECTURE!r}")
        if len(cfg.DATASETS.TESTS) != 1:
            raise ValueError(f"DATASETS.TESTS must name exactly one test set (the results table's), got "
                             f"{tuple(cfg.DATASETS.TESTS)}")
        self.cfg = cfg
        self.root = cfg.OUTPUT_DIR
        self.results = ResultsTable(self.root)
        self.order: List[str] = []

    # --- fast-reid entry-point interface (tools/train_net.py) ---------------------------------------------------

    @classmethod
    def build_model(cls, cfg):
        """``--eval-only``: a CLIPReID model to load ``MODEL.WEIGHTS`` into (e.g. ``OUTPUT_DIR/stage2/model_final.pth``
        or an official checkpoint converted by tools/convert_weights.py)."""
        return CLIPReIDTrainer.build_model(cfg)

    @classmethod
    def test(cls, cfg, model):
        return DefaultTrainer.test(cfg, model)

    def resume_or_load(self, resume: bool = True) -> None:
        """The pipeline always continues where it stopped; ``resume`` is not needed."""

    def stage_cfg(self, folder: str, opts=(), **keys):
        c = self.cfg.clone()
        c.defrost()
        c.merge_from_list(list(opts))
        c.OUTPUT_DIR = os.path.join(self.root, folder)
        c.MODEL.HEADS.NUM_CLASSES = 0  # fast-reid sets it from the training set
        c.MODEL.WEIGHTS = ""
        c.merge_from_list([x for kv in keys.items() for x in kv])
        c.TEST.EVAL_PERIOD = max(int(c.SOLVER.MAX_EPOCH), 1)  # the row is the final model's score
        c.freeze()
        return c

    def train(self) -> Dict[str, Dict]:
        s1 = self.stage_cfg("stage1")
        self.record("frozen CLIP (no training)", "reference", run_stage("stage 1 (prompts)", s1, CLIPReIDPromptTrainer))
        prompts = os.path.join(s1.OUTPUT_DIR, PROMPTS_FILE)
        s2 = self.stage_cfg("stage2", self.cfg.CLIPREID.STAGE2_OPTS, **{"CLIPREID.PROMPTS": prompts})
        self.record("CLIP-ReID", "CLIP-ReID", run_stage("stage 2 (image encoder)", s2, CLIPReIDTrainer))
        if "no_i2t" in self.cfg.CLIPREID.BASELINES:
            c = self.stage_cfg("stage2_no_i2t", self.cfg.CLIPREID.STAGE2_OPTS,
                               **{"CLIPREID.PROMPTS": "", "CLIPREID.I2T_WEIGHT": 0.0})
            self.record("CLIP-ReID w/o i2t loss", "ablation", run_stage("stage 2 without i2t", c, CLIPReIDTrainer))
        if "image_only" in self.cfg.CLIPREID.BASELINES:
            c = image_only_cfg(self.stage_cfg("image_only", self.cfg.CLIPREID.STAGE2_OPTS))
            self.record("image-only baseline", "ablation", run_stage("image-only baseline", c, DefaultTrainer))
        return self.report()

    def record(self, row: str, group: str, metrics: Dict[str, float]) -> None:
        self.order.append(row)
        self.results.add(row, group, metrics, save=comm.is_main_process())

    def report(self) -> Dict[str, Dict]:
        title = f"CLIP-ReID: {' + '.join(self.cfg.DATASETS.NAMES)} -> {self.cfg.DATASETS.TESTS[0]}"
        if comm.is_main_process():
            table = self.results.write_tables(self.order, title=title)
            logger.info(f"{title} (%):\n{table}\nwritten to {os.path.join(self.root, 'results.md')} and results.csv")
        return {n: self.results.get(n) for n in self.order}
