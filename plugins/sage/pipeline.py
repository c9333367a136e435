"""``SAGEPipeline``: one config runs SAGE-reID end to end (``PLUGINS.TRAINER: SAGEPipeline``).

Folders: ``plugins.sage.layout`` (stage0/<tag>, stage0/blend, stage0/avg, stage0/target_supervised, stage1/<tag>,
stage1/blend, stage1/avg, stage2/<sage|mole|without_<tag>>, analysis/, results.json|md|csv). Rows, in table order:
``plugins.sage.rows.ROWS`` (source models, Blend + ViT, Avg + ViT, single experts, Blend / Avg + ViT (LoRA), the
static merges, LoRAHub, MoLE, SAGE, leave-one-out, the supervised upper bound); every row on the target test set:
mAP, R-1, R-5, R-10.

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

from ..engine.loaders import dataset_items
from ..engine.pseudo_label_trainer import unlabelled_pool
from ..engine.results import ResultsTable, metrics_of
from ..engine.seeding import seed_stage
from ..engine.stages import DONE_FILE, from_main, run_stage
from ..registry import TRAINER_REGISTRY
from .analysis_io import analyze_pipeline_run
from .bn_recalibration import recalibrate_batchnorm
from .builders import (build_mean_source_model, build_static_merge_model, load_expert_model, load_gated_model,
                       load_model_state, load_source_weights, mean_source_state)
from .config import eval_model_cfg, source_tags
from .layout import TRAINED_GATES, RunLayout, check_tags, final_checkpoint, run_paths
from .lorahub_fit import fit_lorahub_model
from .rows import BASELINES, STATIC_MERGES, row, row_name
from .trainers import SAGEExpertTrainer, SAGEGateTrainer

__all__ = ["SAGEPipeline", "DONE_FILE"]

logger = logging.getLogger("fastreid." + __name__)


@TRAINER_REGISTRY.register()
class SAGEPipeline:
    """Stages 0 -> 1 -> 2, every baseline, the results table (rows: ``plugins.sage.rows``; folders:
    ``plugins.sage.layout``)."""

    def __init__(self, cfg):
        s = cfg.SAGE
        self.sources, self.tags = source_tags(cfg)
        check_tags(self.tags)
        for key in ("SOURCE_WEIGHTS", "EXPERT_DIRS"):
            missing = [p for p in s.get(key) if not os.path.exists(p)]
            if missing:
                raise FileNotFoundError(f"SAGE.{key}: {missing} do not exist")
        unknown = [b for b in s.BASELINES if b not in BASELINES]
        if unknown:
            raise ValueError(f"SAGE.BASELINES has unknown entries {unknown}; choose from {list(BASELINES)}")
        if "blend_vit_lora" in s.BASELINES and not s.BLEND:
            raise ValueError("SAGE.BASELINES 'blend_vit_lora' (Blend + ViT (LoRA)) adapts the pooled-source model: set "
                             "SAGE.BLEND True to train it")
        if len(cfg.DATASETS.TESTS) != 1:
            raise ValueError(f"DATASETS.TESTS must name exactly one target test set, got {tuple(cfg.DATASETS.TESTS)}")
        if s.GATE.KIND not in TRAINED_GATES:
            raise ValueError(f"SAGE.GATE.KIND of the pipeline's main row must be one of {TRAINED_GATES}, got "
                             f"{s.GATE.KIND!r} (LoRA-Avg is the 'lora_avg' baseline)")
        self.cfg = cfg
        self.root = cfg.OUTPUT_DIR
        self.layout = RunLayout(cfg.OUTPUT_DIR)
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
        paths = run_paths(cfg, gate=cfg.SAGE.GATE.KIND)
        return load_gated_model(eval_model_cfg(cfg), paths.source_weights, paths.expert_dirs,
                                paths.stage2_checkpoint, gate=paths.gate)

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
        baselines = set(s.BASELINES)
        if "supervised" in baselines:
            self.check_target_labels()  # before hours of training, not at the last row
        self.pretrained = self.pretrain() if s.PRETRAIN_DATASETS else ""
        sources = self.source_models()
        blend = self.blend() if s.BLEND else ""
        if "avg_vit" in baselines:
            self.eval_row("avg_vit", lambda: build_mean_source_model(self.eval_cfg, sources))
        experts = self.expert_models(sources)
        if "blend_vit_lora" in baselines:
            self.expert_stage("blend_vit_lora", "blend", blend, "stage 1 (expert on the Blend model)")
        if "avg_vit_lora" in baselines:
            self.expert_stage("avg_vit_lora", "avg", self.mean_source(sources),
                              "stage 1 (expert on the mean backbone)")
        for key in STATIC_MERGES:
            if key in baselines:
                self.eval_row(key, lambda key=key: build_static_merge_model(self.eval_cfg, sources, experts, key),
                              recalibrate=bool(s.MERGE.RECALIBRATE_BN))
        if "lorahub" in baselines:
            self.eval_row("lorahub", lambda: self._lorahub(sources, experts), recalibrate=bool(s.MERGE.RECALIBRATE_BN))
        if "mole" in baselines:
            self.gate_stage(row_name("mole"), self.layout.gate_dir("mole"), "mole", sources, experts)
        self.gate_stage(row_name(s.GATE.KIND), self.layout.gate_dir(s.GATE.KIND), s.GATE.KIND, sources, experts)
        if s.LEAVE_ONE_OUT:
            for k, tag in enumerate(self.tags):
                keep = [i for i in range(len(self.tags)) if i != k]
                self.gate_stage(row_name("leave_one_out", self.sources[k]), self.layout.leave_one_out_dir(tag),
                                s.GATE.KIND, [sources[i] for i in keep], [experts[i] for i in keep],
                                group=row("leave_one_out").group)
        if "supervised" in baselines:
            self.supervised()
        report = self.report()
        if s.ANALYZE and s.GATE.KIND == "sage":
            self.analyze()
        return report

    # --- stages ----------------------------------------------------------------------------------------------

    def pretrain(self) -> str:
        """Shared pre-training on ``SAGE.PRETRAIN_DATASETS``; returns its ViT weights exported as safetensors."""
        out = self.layout.pretrain_dir
        cfg = self.stage_cfg("PRETRAIN", out, trainer="DefaultTrainer", names=tuple(self.cfg.SAGE.PRETRAIN_DATASETS))
        cfg.defrost()
        # fast-reid's checkpointer hook needs a test set: the first pre-training dataset (in-domain sanity check)
        cfg.DATASETS.TESTS = tuple(self.cfg.SAGE.PRETRAIN_DATASETS)[:1]
        cfg.freeze()
        self.run_stage("pre-training", cfg, DefaultTrainer)
        path = self.layout.pretrained_vit
        if comm.is_main_process() and not os.path.isfile(path):
            prefix = "backbone.vit."
            state = load_model_state(final_checkpoint(out))
            save_file({k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}, path,
                      metadata={"format": "pt"})
        comm.synchronize()
        return path

    def source_models(self) -> List[str]:
        """Stage 0: a checkpoint per source (given, or trained here); their target scores are rows."""
        given = list(self.cfg.SAGE.SOURCE_WEIGHTS)
        paths = []
        for k, (name, tag) in enumerate(zip(self.sources, self.tags)):
            if given:
                paths.append(given[k])
                self.eval_row("source", lambda k=k: self._load_source(given[k]), source=name)
                continue
            out = self.layout.source_dir(tag)
            cfg = self.stage_cfg(0, out, trainer="DefaultTrainer", names=(name,))
            self.record("source", self.run_stage(f"stage 0 ({name})", cfg, DefaultTrainer), source=name)
            paths.append(final_checkpoint(out))
        return paths

    def blend(self) -> str:
        """"Blend + ViT": one stage-0 model on the pooled sources; returns its checkpoint."""
        out = self.layout.blend_dir
        cfg = self.stage_cfg(0, out, trainer="DefaultTrainer", names=tuple(self.sources))
        self.record("blend", self.run_stage("stage 0 (blend)", cfg, DefaultTrainer))
        return final_checkpoint(out)

    def mean_source(self, sources: List[str]) -> str:
        """The mean of the source models written once to ``stage0/avg/model.safetensors`` (the merged base's route,
        ``builders.mean_source_state``), so that stage 1 can start from it like from any source checkpoint."""
        path = self.layout.mean_source
        if comm.is_main_process() and not os.path.isfile(path):
            state = mean_source_state(build_model(self.eval_cfg), sources)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()}, path + ".tmp", metadata={"format": "pt"})
            os.replace(path + ".tmp", path)  # never leave a half-written file behind a kill
        comm.synchronize()
        return path

    def expert_models(self, sources: List[str]) -> List[str]:
        """Stage 1: one expert per source on the target (or the given SAGE.EXPERT_DIRS, evaluated)."""
        given = list(self.cfg.SAGE.EXPERT_DIRS)
        dirs = []
        for k, (name, tag) in enumerate(zip(self.sources, self.tags)):
            if given:
                dirs.append(given[k])
                self.eval_row("expert", lambda k=k: load_expert_model(self.eval_cfg, sources[k], given[k]),
                              source=name)
                continue
            dirs.append(self.expert_stage("expert", tag, sources[k], f"stage 1 (expert {name})", source=name))
        return dirs

    def expert_stage(self, key: str, tag: str, weights: str, title: str, source: Optional[str] = None) -> str:
        """Stage 1 on the backbone ``weights`` in ``stage1/<tag>`` (same pseudo-label trainer for every expert row);
        returns the exported expert folder."""
        cfg = self.stage_cfg(1, self.layout.expert_stage_dir(tag), trainer="SAGEExpertTrainer", weights=weights)
        self.record(key, self.run_stage(title, cfg, SAGEExpertTrainer), source=source)
        return self.layout.expert_dir(tag)

    def gate_stage(self, name: str, out: str, kind: str, sources: List[str], experts: List[str],
                   group: str = "learned merge") -> None:
        """Stage 2 with gate ``kind`` on the given experts, in the stage folder ``out``; results row ``name``."""
        cfg = self.stage_cfg(2, out, trainer="SAGEGateTrainer", sources=sources, experts=experts, gate=kind)
        self._record_named(name, group, self.run_stage(f"stage 2 ({name})", cfg, SAGEGateTrainer))

    def check_target_labels(self) -> None:
        """The upper bound trains on the target's own labels: refuse a target pool without identities."""
        names = tuple(self.cfg.DATASETS.NAMES)
        pids = {it[1] for it in dataset_items(names, "train")}
        if len(pids) < 2:
            raise ValueError(f"SAGE.BASELINES 'supervised' trains on the target's labels, but the train set of "
                             f"DATASETS.NAMES {names} has {len(pids)} identity label(s) {sorted(pids)[:3]}: remove "
                             f"'supervised' for an unlabelled target")

    def supervised(self) -> None:
        """The upper bound: the stage-0 recipe on the target's own labelled train set (``DATASETS.NAMES``)."""
        cfg = self.stage_cfg(0, self.layout.supervised_dir, trainer="DefaultTrainer",
                             names=tuple(self.cfg.DATASETS.NAMES))
        self.record("supervised", self.run_stage("stage 0 (supervised on the target)", cfg, DefaultTrainer))

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

    def record(self, key: str, metrics: Dict[str, float], source: Optional[str] = None) -> None:
        """Add row ``key`` of ``plugins.sage.rows`` (per-source rows: of ``source``) with its group."""
        self._record_named(row_name(key, source), row(key).group, metrics)

    def _record_named(self, name: str, group: str, metrics: Dict[str, float]) -> None:
        self.order.append(name)
        self.results.add(name, group, metrics, save=comm.is_main_process())

    def eval_row(self, key: str, build: Callable[[], torch.nn.Module], *, source: Optional[str] = None,
                 recalibrate: bool = False) -> None:
        """Evaluate the model ``build()`` returns on the target as row ``key``, unless it is already in
        results.json. ``recalibrate``: first re-estimate its BatchNorm statistics on the target images
        (bn_recalibration.py)."""
        name = row_name(key, source)
        if name in self.results:
            logger.info(f"{name}: already measured, skipped")
            self.order.append(name)
            return
        logger.info(f"{name}: building and evaluating")
        seed_stage(self.cfg, f"row: {name}")  # merges and BN re-estimation draw random numbers: not from earlier stages
        model = build()
        if recalibrate:
            recalibrate_batchnorm(self.eval_cfg, model, self.target_items)
        model.eval()
        device = torch.device(self.cfg.MODEL.DEVICE)
        results = DefaultTrainer.test(self.eval_cfg, model.to(device))
        self.record(key, from_main(metrics_of(results, name) if comm.is_main_process() else None), source=source)
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
            with open(self.layout.lorahub_coefficients, "w") as f:
                json.dump(dict(zip(self.tags, coefficients)), f, indent=2)
        return model

    def analyze(self) -> None:
        """The paper's analyses of the SAGE model (rank 0; plugins.sage.analysis_io)."""
        out = self.layout.analysis_dir
        if comm.is_main_process():
            if os.path.isfile(os.path.join(out, "summary.md")):
                logger.info(f"analysis: complete in {out}, skipped")
            else:
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
