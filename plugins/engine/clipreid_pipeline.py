"""``CLIPReIDStagePipeline``: the part of a multi-stage pipeline that trains CLIP-ReID (stage 1 prompts, stage 2
image encoder), shared by the CLIP-ReID and MoSAIC-ReID pipelines (each registers a subclass that adds its own
stages and rows). Not registered itself.

    OUTPUT_DIR/
      stage1/                 prompt learning: image_features.safetensors (cache), prompt_learner.safetensors
      stage2/                 image-encoder fine-tuning with the learned prompts (fast-reid checkpoints)
      results.json|md|csv     every row on DATASETS.TESTS[0]: mAP, R-1, R-5, R-10

A stage folder holding ``done.json`` is complete and skipped; an interrupted stage resumes from its last
checkpoint; delete a folder to redo it (``plugins.engine.stages``).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

from fastreid.engine import DefaultTrainer
from fastreid.utils import comm

from .clipreid_trainers import PROMPTS_FILE, CLIPReIDPromptTrainer, CLIPReIDTrainer
from .results import ResultsTable
from .stages import run_stage

__all__ = ["CLIPReIDStagePipeline"]

logger = logging.getLogger("fastreid." + __name__)


class CLIPReIDStagePipeline:
    """Trainer interface of ``tools/train_net.py`` (``resume_or_load``, ``train``, classmethods ``build_model`` /
    ``test``) + the CLIP-ReID stages (``train_clipreid``) + the results table (``record``, ``report``)."""

    meta_architecture = "CLIPReID"  # what MODEL.META_ARCHITECTURE must name
    title_prefix = "CLIP-ReID"  # of the results table

    def __init__(self, cfg):
        if cfg.MODEL.META_ARCHITECTURE != self.meta_architecture:
            raise ValueError(f"{type(self).__name__} trains MODEL.META_ARCHITECTURE {self.meta_architecture}, got "
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

    def train(self) -> Dict[str, Dict]:
        self.train_clipreid()
        return self.report()

    # --- stages -----------------------------------------------------------------------------------------------

    def stage_cfg(self, folder: str, opts=(), **keys):
        """The pipeline's config for one stage folder: ``opts`` (KEY VALUE ...) merged, then ``keys``."""
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

    def train_clipreid(self) -> Tuple[str, str]:
        """Stages 1 and 2 (rows "frozen CLIP" and "CLIP-ReID"); returns (prompt file, stage-2 folder)."""
        arch = {"MODEL.META_ARCHITECTURE": "CLIPReID"}
        s1 = self.stage_cfg("stage1", **arch)
        self.record("frozen CLIP (no training)", "reference", run_stage("stage 1 (prompts)", s1, CLIPReIDPromptTrainer))
        prompts = os.path.join(s1.OUTPUT_DIR, PROMPTS_FILE)
        s2 = self.stage_cfg("stage2", self.cfg.CLIPREID.STAGE2_OPTS, **{"CLIPREID.PROMPTS": prompts}, **arch)
        self.record("CLIP-ReID", "CLIP-ReID", run_stage("stage 2 (image encoder)", s2, CLIPReIDTrainer))
        return prompts, s2.OUTPUT_DIR

    # --- results ----------------------------------------------------------------------------------------------

    def record(self, row: str, group: str, metrics: Dict[str, float]) -> None:
        self.order.append(row)
        self.results.add(row, group, metrics, save=comm.is_main_process())

    def report(self) -> Dict[str, Dict]:
        title = f"{self.title_prefix}: {' + '.join(self.cfg.DATASETS.NAMES)} -> {self.cfg.DATASETS.TESTS[0]}"
        if comm.is_main_process():
            table = self.results.write_tables(self.order, title=title)
            logger.info(f"{title} (%):\n{table}\nwritten to {os.path.join(self.root, 'results.md')} and results.csv")
        return {n: self.results.get(n) for n in self.order}
