"""``MoEKDPipeline`` (TRAINER_REGISTRY): one config runs MoE-KD's rows end to end (``PLUGINS.TRAINER:
MoEKDPipeline``), each through fast-reid's engine (``MoEKDTrainer``) in its own folder:

    OUTPUT_DIR/
      expert_cache/             frozen expert outputs, computed once, shared by every row (MOEKD.CACHE)
      base/                     Table 5 "Base Model": fast-reid Baseline on ResNet-50 (MOEKD.BASE_DEPTH)
      clip_concat/              "+ CLIP Expert" (concat fusion)          align_average/  "+ ALIGN Expert" (averaged)
      moe/                      "+ MoE": the gated teacher (stage 1)    kd/             "+ KD": the student (stage 2)
      gate/                     gate_weights.{md,csv,json,png}: mean gate weight per expert per test domain
      results.json|md|csv       every row on every DATASETS.TESTS set (the first in-domain, the others cross-domain)
      timings.json              seconds per row (training + its evaluation)

``MOEKD.ROWS`` picks the rows (Table 5's order is kept); "kd" distils from "moe"'s ``model_final.pth``. A row
folder holding ``done.json`` is complete and skipped; an interrupted row resumes from its last checkpoint
(``plugins.engine.stages``); results already in results.json are not re-measured.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, List

from fastreid.utils import comm

from ..engine.eval_only import load_eval_weights
from ..engine.results import ResultsTable, metrics_of
from ..engine.stages import FINAL_CHECKPOINT, from_main, run_stage
from ..registry import TRAINER_REGISTRY
from .analysis import gate_weights_report
from .config import ROWS
from .trainers import MoEKDTrainer, attach_expert_cache

__all__ = ["MoEKDPipeline", "row_labels", "resnet_name"]

logger = logging.getLogger("fastreid." + __name__)

def resnet_name(depth: str) -> str:
    """fast-reid's ResNet DEPTH ("18x", "50x", ...) -> "ResNet-18", "ResNet-50", ..."""
    return f"ResNet-{str(depth).rstrip('x')}"


def row_labels(cfg) -> Dict[str, str]:
    """Row -> its label in the results tables, with the networks the config actually trains (the base row's
    ``MOEKD.BASE_DEPTH``, the student's ``MOEKD.STUDENT.DEPTH``)."""
    m = cfg.MOEKD
    return {"base": f"Base Model ({resnet_name(m.BASE_DEPTH)})", "clip_concat": "+ CLIP Expert (concat)",
            "align_average": "+ ALIGN Expert (averaged)", "moe": "+ MoE (teacher)",
            "kd": f"+ KD ({resnet_name(m.STUDENT.DEPTH)} student)"}


@TRAINER_REGISTRY.register()
class MoEKDPipeline:
    """The rows of ``MOEKD.ROWS`` -> results table + gate analysis (see the module docstring)."""

    def __init__(self, cfg):
        unknown = [r for r in cfg.MOEKD.ROWS if r not in ROWS]
        if unknown:
            raise ValueError(f"MOEKD.ROWS has unknown entries {unknown}; choose from {list(ROWS)}")
        if "kd" in cfg.MOEKD.ROWS and "moe" not in cfg.MOEKD.ROWS and not cfg.MOEKD.STUDENT.TEACHER_WEIGHTS:
            raise ValueError("MOEKD.ROWS 'kd' distils the 'moe' row's teacher: add 'moe' or set "
                             "MOEKD.STUDENT.TEACHER_WEIGHTS")
        if not cfg.DATASETS.TESTS:
            raise ValueError("DATASETS.TESTS must name at least one test set (the first is the in-domain one)")
        self.cfg = cfg
        self.labels = row_labels(cfg)
        self.root = cfg.OUTPUT_DIR
        self.results = ResultsTable(self.root)
        self.order: List[str] = []
        self.timings: Dict[str, float] = {}

    @classmethod
    def build_model(cls, cfg):
        """``--eval-only``: the model of MODEL.META_ARCHITECTURE (MoEKDStudent / MoEKDTeacher / Baseline)."""
        return MoEKDTrainer.build_model(cfg)

    @classmethod
    def test(cls, cfg, model):
        attach_expert_cache(cfg, model, splits=("query", "gallery"))
        return MoEKDTrainer.test(cfg, model)

    def resume_or_load(self, resume: bool = True) -> None:
        """The pipeline always continues where it stopped."""

    # --- row configs ------------------------------------------------------------------------------------------

    def row_cfg(self, row: str):
        m = self.cfg.MOEKD
        c = self.cfg.clone()
        c.defrost()
        c.merge_from_list(list({"kd": m.STUDENT_OPTS, "moe": m.TEACHER_OPTS}.get(row, m.LADDER_OPTS)))
        c.OUTPUT_DIR = os.path.join(self.root, row)
        c.MOEKD.CACHE.DIR = m.CACHE.DIR or os.path.join(self.root, "expert_cache")
        c.MODEL.HEADS.NUM_CLASSES = 0  # fast-reid sets it from the training set
        c.MODEL.WEIGHTS = ""
        c.DATASETS.TESTS = (self.cfg.DATASETS.TESTS[0],)
        c.TEST.EVAL_PERIOD = max(int(c.SOLVER.MAX_EPOCH), 1)  # the row is the final model's score
        if row == "base":
            c.MODEL.META_ARCHITECTURE = "Baseline"
            c.MODEL.BACKBONE.DEPTH = m.BASE_DEPTH
            c.MODEL.BACKBONE.FEAT_DIM = 512 if m.BASE_DEPTH in ("18x", "34x") else 2048
            c.MODEL.HEADS.NAME = "EmbeddingHead"
            c.MODEL.HEADS.POOL_LAYER = "GlobalAvgPool"
            c.MODEL.HEADS.NECK_FEAT = "before"
            c.MODEL.HEADS.WITH_BNNECK = True
            c.MODEL.HEADS.CLS_LAYER = "Linear"
            c.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
            c.MODEL.LOSSES.CE.EPSILON = float(m.LABEL_SMOOTH)
            c.MODEL.LOSSES.CE.SCALE = 1.0
            c.MODEL.LOSSES.TRI.MARGIN = float(m.TRIPLET_MARGIN)
            c.MODEL.LOSSES.TRI.SCALE = float(m.TRIPLET_WEIGHT)
            c.MODEL.LOSSES.TRI.HARD_MINING = True
            c.MODEL.LOSSES.TRI.NORM_FEAT = False
        elif row == "kd":
            c.MODEL.META_ARCHITECTURE = "MoEKDStudent"
            c.MOEKD.FUSION = "moe"
            c.MOEKD.STUDENT.TEACHER_WEIGHTS = (m.STUDENT.TEACHER_WEIGHTS
                                               or os.path.join(self.root, "moe", FINAL_CHECKPOINT))
        else:
            c.MODEL.META_ARCHITECTURE = "MoEKDTeacher"
            c.MOEKD.FUSION = {"clip_concat": "concat", "align_average": "average", "moe": "moe"}[row]
        c.freeze()
        return c

    # --- running ----------------------------------------------------------------------------------------------

    def train(self) -> Dict[str, Dict]:
        for row in ROWS:  # Table 5's order
            if row not in self.cfg.MOEKD.ROWS:
                continue
            c = self.row_cfg(row)
            start = time.perf_counter()
            self.record(row, self.cfg.DATASETS.TESTS[0], run_stage(self.labels[row], c, MoEKDTrainer))
            for name in self.cfg.DATASETS.TESTS[1:]:
                self.cross_domain(row, c, name)
            self.timings[row] = round(time.perf_counter() - start, 1)
        if "moe" in self.cfg.MOEKD.ROWS:
            names = list(dict.fromkeys(list(self.cfg.DATASETS.TESTS)))
            gate_weights_report(self.row_cfg("moe"), os.path.join(self.root, "moe", FINAL_CHECKPOINT), names,
                                os.path.join(self.root, "gate"))
        if comm.is_main_process():
            with open(os.path.join(self.root, "timings.json"), "w") as f:
                json.dump(self.timings, f, indent=2)
        return self.report()

    def row_name(self, row: str, test: str) -> str:
        return f"{self.labels[row]} @ {test}"

    def record(self, row: str, test: str, metrics: Dict[str, float]) -> None:
        name = self.row_name(row, test)
        group = "in-domain" if test == self.cfg.DATASETS.TESTS[0] else "cross-domain"
        self.order.append(name)
        self.results.add(name, group, metrics, save=comm.is_main_process())

    def cross_domain(self, row: str, c, test: str) -> None:
        """The row's final model on another test set (no fine-tuning)."""
        name = self.row_name(row, test)
        if name in self.results:
            self.order.append(name)
            return
        e = c.clone()
        e.defrost()
        e.DATASETS.TESTS = (test,)
        e.MODEL.HEADS.NUM_CLASSES = 0  # evaluation only: no classifier, no teacher
        e.MOEKD.STUDENT.TEACHER_WEIGHTS = ""
        e.freeze()
        model = MoEKDTrainer.build_model(e)
        load_eval_weights(model, os.path.join(c.OUTPUT_DIR, FINAL_CHECKPOINT))
        results = self.test(e, model)
        metrics = from_main(metrics_of(results, name) if comm.is_main_process() else None)
        self.record(row, test, metrics)

    def report(self) -> Dict[str, Dict]:
        title = f"MoE-KD: {' + '.join(self.cfg.DATASETS.NAMES)} -> {', '.join(self.cfg.DATASETS.TESTS)}"
        if comm.is_main_process():
            table = self.results.write_tables(self.order, title=title)
            logger.info(f"{title} (%):\n{table}\nwritten to {os.path.join(self.root, 'results.md')}")
        return {n: self.results.get(n) for n in self.order}
