"""``SAGEPipeline``: one config runs SAGE-reID end to end (``PLUGINS.TRAINER: SAGEPipeline``).

    OUTPUT_DIR/
      pretrain/               optional shared pre-training (SAGE.PRETRAIN_DATASETS) -> vit.safetensors
      stage0/<source>/        fast-reid baseline on one source (skipped when SAGE.SOURCE_WEIGHTS are given)
      stage0/blend/           the "Blend" baseline: one model on the pooled sources (SAGE.BLEND)
      stage1/<source>/expert/ one LoRA expert per source, trained on the unlabelled target (peft layout + neck)
      stage2/sage/            gate training (one epoch); stage2/mole/ the MoLE baseline; stage2/without_<source>/
      analysis/               gate weights / correlation / CKA tables and heatmaps of the SAGE model (SAGE.ANALYZE)
      results.json|md|csv     every row on the target test set: mAP, R-1, R-5, R-10

Resuming: a stage folder holding ``done.json`` is complete and skipped; a stage interrupted mid-way resumes from
its last checkpoint (fast-reid's ``last_checkpoint``); rows already in ``results.json`` are not re-measured. The
run therefore always continues where it stopped: delete a stage folder (or a row of results.json) to redo it.
With ``PLUGINS.SEED >= 0`` every stage, epoch and evaluation row starts from a seed derived from the run's seed
(``plugins.engine.seeding``): a resumed run ends with the same results.json as an uninterrupted one.
Under torch.distributed every rank runs the same sequence; trainers use DDP, rank 0 writes the files.
"""
from __future__ import annotations

import gc
import json
import logging
import os
from typing import Callable, Dict, List, Optional

import torch
from fastreid.engine import DefaultTrainer
from fastreid.modeling import build_model
from fastreid.utils import comm
from safetensors.torch import save_file

from ..engine.pseudo_label_trainer import unlabelled_pool
from ..engine.results import ResultsTable, metrics_of
from ..engine.seeding import seed_stage
from ..engine.stages import DONE_FILE, FINAL_CHECKPOINT, from_main, run_stage
from ..registry import TRAINER_REGISTRY
from .bn_recalibration import recalibrate_batchnorm
from .builders import (MERGE_ROWS, build_static_merge_model, load_expert_model, load_model_state,
                       load_source_weights)
from .config import BASELINES, eval_model_cfg, source_tags
from .lorahub_fit import fit_lorahub_model
from .trainers import EXPERT_SUBDIR, SAGEExpertTrainer, SAGEGateTrainer

__all__ = ["SAGEPipeline", "ROW_NAMES", "DONE_FILE"]

logger = logging.getLogger("fastreid." + __name__)

PRETRAINED_VIT = "vit.safetensors"
ROW_NAMES = {"lora_avg": "LoRA-Avg", "task_arithmetic": "Task Arithmetic", "ties": "TIES", "dare": "DARE",
             "knots": "KnOTS", "tsv_merge": "TSV-M", "lorahub": "LoRAHub", "mole": "MoLE"}


@TRAINER_REGISTRY.register()
class SAGEPipeline:
    """Stages 0 -> 1 -> 2, every baseline, the results table (see the module docstring for the folder layout)."""

    def __init__(self, cfg):
        s = cfg.SAGE
        self.sources, self.tags = source_tags(cfg)
        for key in ("SOURCE_WEIGHTS", "EXPERT_DIRS"):
            missing = [p for p in s.get(key) if not os.path.exists(p)]
            if missing:
                raise FileNotFoundError(f"SAGE.{key}: {missing} do not exist")
        unknown = [b for b in s.BASELINES if b not in BASELINES]
        if unknown:
            raise ValueError(f"SAGE.BASELINES has unknown entries {unknown}; choose from {list(BASELINES)}")
        if len(cfg.DATASETS.TESTS) != 1:
            raise ValueError(f"DATASETS.TESTS must name exactly one target test set, got {tuple(cfg.DATASETS.TESTS)}")
        if s.GATE.KIND not in ("sage", "mole"):
            raise ValueError(f"SAGE.GATE.KIND of the pipeline's main row must be 'sage' or 'mole', got "
                             f"{s.GATE.KIND!r} (LoRA-Avg is the 'lora_avg' baseline)")
        self.cfg = cfg
        self.root = cfg.OUTPUT_DIR
        self.target = cfg.DATASETS.TESTS[0]
        self.results = ResultsTable(self.root)
        self.order: List[str] = []
        self.pretrained = ""  # ViT weights of the shared pre-training, when SAGE.PRETRAIN_DATASETS is set
        self.eval_cfg = eval_model_cfg(cfg)  # evaluation-only models (merges, given sources / experts)
        self._target_items: Optional[list] = None

    # --- fast-reid entry-point interface (tools/train_net.py) ---------------------------------------------------

    # --eval-only rebuilds the trained model from OUTPUT_DIR (plugins.engine.eval_only): no MODEL.WEIGHTS on top
    BUILDS_TRAINED_MODEL = True

    @classmethod
    def build_model(cls, cfg):
        """``--eval-only``: this run's trained stage-2 model (gate ``SAGE.GATE.KIND``): sources and experts from
        ``OUTPUT_DIR`` (or ``SAGE.SOURCE_WEIGHTS`` / ``SAGE.EXPERT_DIRS``), gates and neck from
        ``stage2/<gate>/model_final.pth`` (train_net refuses a ``MODEL.WEIGHTS`` that would be loaded over it)."""
        from .analysis_io import load_stage2_model, pipeline_paths

        return load_stage2_model(eval_model_cfg(cfg), pipeline_paths(cfg, gate=cfg.SAGE.GATE.KIND))

    @classmethod
    def test(cls, cfg, model):
        return DefaultTrainer.test(cfg, model)

    def resume_or_load(self, resume=True):
        """The pipeline always continues where it stopped (see the module docstring); ``resume`` is not needed."""
        if not resume and comm.is_main_process() and os.path.isfile(self.results.path):
            logger.info(f"{self.root} holds an earlier run: completed stages and measured rows are reused "
                        f"(delete them to redo them)")

    def train(self) -> Dict[str, Dict]:
        s = self.cfg.SAGE
        self.pretrained = self.pretrain() if s.PRETRAIN_DATASETS else ""
        sources = self.source_models()
        if s.BLEND:
            self.blend()
        experts = self.expert_models(sources)
        for row in MERGE_ROWS:
            if row in s.BASELINES:
                self.eval_row(ROW_NAMES[row], "static merge",
                              lambda row=row: build_static_merge_model(self.eval_cfg, sources, experts, row),
                              recalibrate=bool(s.MERGE.RECALIBRATE_BN))
        if "lorahub" in s.BASELINES:
            self.eval_row("LoRAHub", "learned merge", lambda: self._lorahub(sources, experts),
                          recalibrate=bool(s.MERGE.RECALIBRATE_BN))
        if "mole" in s.BASELINES:
            self.gate_stage("MoLE", "mole", "mole", sources, experts)
        self.gate_stage("SAGE" if s.GATE.KIND == "sage" else "MoLE", s.GATE.KIND, s.GATE.KIND, sources, experts)
        if s.LEAVE_ONE_OUT:
            for k, tag in enumerate(self.tags):
                keep = [i for i in range(len(self.tags)) if i != k]
                self.gate_stage(f"SAGE w/o {self.sources[k]}", f"without_{tag}", s.GATE.KIND,
                                [sources[i] for i in keep], [experts[i] for i in keep], group="leave-one-out")
        report = self.report()
        if s.ANALYZE and s.GATE.KIND == "sage":
            self.analyze()
        return report

    # --- stages ----------------------------------------------------------------------------------------------

    def pretrain(self) -> str:
        """Shared pre-training on ``SAGE.PRETRAIN_DATASETS``; returns its ViT weights exported as safetensors."""
        out = os.path.join(self.root, "pretrain")
        cfg = self.stage_cfg("PRETRAIN", out, trainer="DefaultTrainer", names=tuple(self.cfg.SAGE.PRETRAIN_DATASETS))
        cfg.defrost()
        # fast-reid's checkpointer hook needs a test set: the first pre-training dataset (in-domain sanity check)
        cfg.DATASETS.TESTS = tuple(self.cfg.SAGE.PRETRAIN_DATASETS)[:1]
        cfg.freeze()
        self.run_stage("pre-training", cfg, DefaultTrainer)
        path = os.path.join(out, PRETRAINED_VIT)
        if comm.is_main_process() and not os.path.isfile(path):
            prefix = "backbone.vit."
            state = load_model_state(os.path.join(out, FINAL_CHECKPOINT))
            save_file({k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}, path,
                      metadata={"format": "pt"})
        comm.synchronize()
        return path

    def source_models(self) -> List[str]:
        """Stage 0: a checkpoint per source (given, or trained here); their target scores are rows."""
        given = list(self.cfg.SAGE.SOURCE_WEIGHTS)
        paths = []
        for k, (name, tag) in enumerate(zip(self.sources, self.tags)):
            row = f"source-only: {name}"
            if given:
                paths.append(given[k])
                self.eval_row(row, "source model", lambda k=k: self._load_source(given[k]))
                continue
            out = os.path.join(self.root, "stage0", tag)
            cfg = self.stage_cfg(0, out, trainer="DefaultTrainer", names=(name,))
            self.record(row, "source model", self.run_stage(f"stage 0 ({name})", cfg, DefaultTrainer))
            paths.append(os.path.join(out, FINAL_CHECKPOINT))
        return paths

    def blend(self) -> None:
        out = os.path.join(self.root, "stage0", "blend")
        cfg = self.stage_cfg(0, out, trainer="DefaultTrainer", names=tuple(self.sources))
        self.record("Blend (pooled sources)", "source model", self.run_stage("stage 0 (blend)", cfg, DefaultTrainer))

    def expert_models(self, sources: List[str]) -> List[str]:
        """Stage 1: one expert per source on the target (or the given SAGE.EXPERT_DIRS, evaluated)."""
        given = list(self.cfg.SAGE.EXPERT_DIRS)
        dirs = []
        for k, (name, tag) in enumerate(zip(self.sources, self.tags)):
            row = f"expert: {name}"
            if given:
                dirs.append(given[k])
                self.eval_row(row, "single expert",
                              lambda k=k: load_expert_model(self.eval_cfg, sources[k], given[k]))
                continue
            out = os.path.join(self.root, "stage1", tag)
            cfg = self.stage_cfg(1, out, trainer="SAGEExpertTrainer", weights=sources[k])
            self.record(row, "single expert", self.run_stage(f"stage 1 (expert {name})", cfg, SAGEExpertTrainer))
            dirs.append(os.path.join(out, EXPERT_SUBDIR))
        return dirs

    def gate_stage(self, row: str, folder: str, kind: str, sources: List[str], experts: List[str],
                   group: str = "learned merge") -> None:
        """Stage 2 with gate ``kind`` on the given experts, in ``stage2/<folder>``."""
        out = os.path.join(self.root, "stage2", folder)
        cfg = self.stage_cfg(2, out, trainer="SAGEGateTrainer", sources=sources, experts=experts, gate=kind)
        self.record(row, group, self.run_stage(f"stage 2 ({row})", cfg, SAGEGateTrainer))

    # --- helpers ---------------------------------------------------------------------------------------------

    def stage_cfg(self, stage, output_dir: str, *, trainer: str, names=None, weights: str = "",
                  sources=(), experts=(), gate: Optional[str] = None):
        """The config of one stage (0, 1, 2 or "PRETRAIN"): the base config + ``SAGE.STAGE<stage>_OPTS`` (or
        ``SAGE.PRETRAIN_OPTS``) + the stage's own keys."""
        c = self.cfg.clone()
        c.defrost()
        opts_key = "PRETRAIN_OPTS" if stage == "PRETRAIN" else f"STAGE{stage}_OPTS"
        c.merge_from_list(list(self.cfg.SAGE.get(opts_key)))
        c.OUTPUT_DIR = output_dir
        c.PLUGINS.TRAINER = trainer
        c.MODEL.HEADS.NUM_CLASSES = 0  # fast-reid sets it from the (pseudo-)labelled train set
        c.MODEL.WEIGHTS = weights
        if names is not None:
            c.DATASETS.NAMES = tuple(names)
        c.SAGE.SOURCE_WEIGHTS = tuple(sources)
        c.SAGE.EXPERT_DIRS = tuple(experts)
        if gate is not None:
            c.SAGE.GATE.KIND = gate
        if stage == 0 and self.pretrained:
            c.MODEL.BACKBONE.PRETRAIN = True
            c.MODEL.BACKBONE.PRETRAIN_PATH = self.pretrained
        elif stage in (1, 2):
            c.MODEL.BACKBONE.PRETRAIN = False  # every weight comes from the source models
        if stage == 2:
            c.PLUGINS.PSEUDO_LABEL.CLASSIFIER_FROZEN = not bool(c.SAGE.GATE.TRAIN_CLASSIFIER)
        c.TEST.EVAL_PERIOD = c.SOLVER.MAX_EPOCH  # the row is the final model's score
        c.freeze()
        return c

    @property
    def target_items(self) -> list:
        """(img_path, camid index) of the unlabelled target pool, read once."""
        if self._target_items is None:
            self._target_items = unlabelled_pool(self.cfg)
        return self._target_items

    def run_stage(self, title: str, cfg, trainer_cls) -> Dict[str, float]:
        """Train one stage in ``cfg.OUTPUT_DIR`` unless it is complete (plugins.engine.stages)."""
        export = (lambda trainer: trainer.export_expert()) if trainer_cls is SAGEExpertTrainer else None
        return run_stage(title, cfg, trainer_cls, after_final_checkpoint=export)

    def record(self, row: str, group: str, metrics: Dict[str, float]) -> None:
        self.order.append(row)
        self.results.add(row, group, metrics, save=comm.is_main_process())

    def eval_row(self, row: str, group: str, build: Callable[[], torch.nn.Module], *,
                 recalibrate: bool = False) -> None:
        """Evaluate the model ``build()`` returns on the target, unless ``row`` is already in results.json.
        ``recalibrate``: first re-estimate its BatchNorm statistics on the target images (bn_recalibration.py)."""
        if row in self.results:
            logger.info(f"{row}: already measured, skipped")
            self.order.append(row)
            return
        logger.info(f"{row}: building and evaluating")
        seed_stage(self.cfg, f"row: {row}")  # merges and BN re-estimation draw random numbers: not from earlier stages
        model = build()
        if recalibrate:
            recalibrate_batchnorm(self.eval_cfg, model, self.target_items)
        model.eval()
        device = torch.device(self.cfg.MODEL.DEVICE)
        results = DefaultTrainer.test(self.eval_cfg, model.to(device))
        self.record(row, group, from_main(metrics_of(results, row) if comm.is_main_process() else None))
        del model
        gc.collect()

    def _load_source(self, path: str) -> torch.nn.Module:
        model = build_model(self.eval_cfg)
        load_source_weights(model, path)
        return model

    def _lorahub(self, sources: List[str], experts: List[str]) -> torch.nn.Module:
        model, coefficients = fit_lorahub_model(self.eval_cfg, sources, experts, items=self.target_items)
        if comm.is_main_process():
            os.makedirs(self.root, exist_ok=True)
            with open(os.path.join(self.root, "lorahub_coefficients.json"), "w") as f:
                json.dump(dict(zip(self.tags, coefficients)), f, indent=2)
        return model

    def analyze(self) -> None:
        """The paper's analyses of the SAGE model (rank 0; plugins.sage.analysis_io)."""
        out = os.path.join(self.root, "analysis")
        if comm.is_main_process():
            if os.path.isfile(os.path.join(out, "summary.md")):
                logger.info(f"analysis: complete in {out}, skipped")
            else:
                from .analysis_io import analyze_pipeline_run

                analyze_pipeline_run(self.cfg, output_dir=out, gate="sage",
                                     max_images=int(self.cfg.SAGE.ANALYSIS_MAX_IMAGES))
                logger.info(f"analysis tables and heatmaps written to {out}")
        comm.synchronize()

    def report(self) -> Dict[str, Dict]:
        title = f"SAGE-reID: {' + '.join(self.sources)} -> {self.target}"
        if comm.is_main_process():
            table = self.results.write_tables(self.order, title=title)
            logger.info(f"{title} (target test set, %):\n{table}\n"
                        f"written to {os.path.join(self.root, 'results.md')} and results.csv")
        return {n: self.results.get(n) for n in self.order}
