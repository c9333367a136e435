"""``DMAdapterTrainer`` (TRAINER_REGISTRY): fast-reid's ``DefaultTrainer`` for DM-Adapter.

- Train loader: the readers' (image, caption) items, captions tokenised once, ``DATALOADER.SAMPLER_TRAIN``
  (``TrainingSampler``: random, as the paper; ``NaiveIdentitySampler``: identity-balanced).
- Solver: Adam (0.9, 0.999, eps ``DMADAPTER.ADAM_EPS``) on the trainable (SMA) parameters, biases at
  ``SOLVER.BIAS_LR_FACTOR`` x lr with ``WEIGHT_DECAY_BIAS``; per-epoch schedule: linear warm-up from
  ``WARMUP_FACTOR`` x lr over ``WARMUP_EPOCHS``, then cosine to ``MIN_LR`` at ``SOLVER.MAX_EPOCH`` (IRRA's
  ``LRSchedulerWithWarmup``, stepped once per epoch by fast-reid's LRScheduler hook).
- Model selection: every ``TEST.EVAL_PERIOD`` epochs the ``DMADAPTER.VAL_SPLIT`` split of ``DATASETS.TESTS`` is
  evaluated and, when the mean R@1 improves (ties: the higher mAP), the model is written to ``OUTPUT_DIR/model_best.pth`` (a fast-reid
  checkpoint: ``--eval-only MODEL.WEIGHTS .../model_best.pth`` reloads it) with ``best.json``. Without a val
  split the last evaluated model is written there. After training the best model is reloaded and evaluated on
  the test split. ``--resume`` continues from the last periodic checkpoint and keeps ``best.json``.
- Evaluation (``test``): every caption of the test split queries all its images (``TextImageEvaluator``).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict

import torch
from fastreid.engine import DefaultTrainer, hooks
from fastreid.evaluation import inference_on_dataset, print_csv_format
from fastreid.data.build import build_reid_train_loader
from fastreid.modeling import build_model
from fastreid.utils import comm
from fastreid.utils.checkpoint import Checkpointer

from ..engine.loaders import dataset_items
from ..engine.models import require_meta_arch
from ..evaluation.text_image import TextImageEvaluator
from ..registry import TRAINER_REGISTRY
from .data import TextImageTestLoader, build_train_set, text_reader
from .meta_arch import DMAdapter

__all__ = ["DMAdapterTrainer", "BEST_FILE", "BEST_STATE", "lr_factor", "param_groups"]

logger = logging.getLogger("fastreid." + __name__)

BEST_FILE = "model_best.pth"
BEST_STATE = "best.json"
SELECT_METRIC = "R1"  # the official criterion; ties (frequent on small val splits) go to the higher mAP
TIE_BREAK = "mAP"


def lr_factor(epoch: int, *, max_epoch: int, warmup_epochs: int, warmup_factor: float, min_ratio: float) -> float:
    """Multiplier of the base lr during epoch ``epoch`` (0-based): linear warm-up, then cosine (IRRA)."""
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        return warmup_factor * (1 - alpha) + alpha
    span = max(1, max_epoch - warmup_epochs)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * (epoch - warmup_epochs) / span)) / 2


def param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float, bias_lr_factor: float,
                 weight_decay_bias: float) -> list:
    """One group per trainable parameter (IRRA's layout): biases at ``bias_lr_factor`` x lr with their own decay."""
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bias = name.endswith(".bias")
        groups.append({"params": [p], "name": name, "lr": lr * (bias_lr_factor if bias else 1.0),
                       "weight_decay": weight_decay_bias if bias else weight_decay})
    if not groups:
        raise ValueError("the model has no trainable parameter")
    return groups


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@TRAINER_REGISTRY.register()
class DMAdapterTrainer(DefaultTrainer):
    """See the module docstring."""

    def __init__(self, cfg):
        if not cfg.PLUGINS.DATA.TEXT:
            raise ValueError("DM-Adapter trains on captions: set PLUGINS.DATA.TEXT True")
        if int(cfg.SOLVER.WARMUP_ITERS) != 0:
            raise ValueError("DM-Adapter warms up per epoch (DMADAPTER.WARMUP_EPOCHS): set SOLVER.WARMUP_ITERS 0")
        if cfg.TEST.FLIP.ENABLED:
            raise ValueError("TEST.FLIP.ENABLED would flip caption batches too: not supported for text retrieval")
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # fast-reid writes config.yaml there while building
        super().__init__(cfg)
        self.best_path = os.path.join(cfg.OUTPUT_DIR, BEST_FILE)
        self.best_state_path = os.path.join(cfg.OUTPUT_DIR, BEST_STATE)

    # --- builders ----------------------------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg) -> DMAdapter:
        model = require_meta_arch(build_model(cfg), DMAdapter, "DMAdapterTrainer")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info(f"DM-Adapter: {trainable:,} trainable of {total:,} parameters ({len(model.blocks())} SMA blocks)")
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        items = dataset_items(cfg.DATASETS.NAMES, "train", show=comm.is_main_process())
        if not items:
            raise ValueError(f"DATASETS.NAMES {tuple(cfg.DATASETS.NAMES)} hold no training pairs")
        return build_reid_train_loader(cfg, train_set=build_train_set(cfg, items))

    @classmethod
    def build_optimizer(cls, cfg, model):
        s = cfg.SOLVER
        if s.OPT != "Adam":
            raise ValueError(f"DM-Adapter's solver is Adam (SOLVER.OPT 'Adam'), got {s.OPT!r}")
        groups = param_groups(model, lr=float(s.BASE_LR), weight_decay=float(s.WEIGHT_DECAY),
                              bias_lr_factor=float(s.BIAS_LR_FACTOR), weight_decay_bias=float(s.WEIGHT_DECAY_BIAS))
        return torch.optim.Adam(groups, lr=float(s.BASE_LR), betas=(0.9, 0.999),
                                eps=float(cfg.DMADAPTER.ADAM_EPS)), None

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        d, s = cfg.DMADAPTER, cfg.SOLVER
        min_ratio = float(d.MIN_LR) / float(s.BASE_LR)

        def factor(epoch: int) -> float:
            return lr_factor(epoch, max_epoch=int(s.MAX_EPOCH), warmup_epochs=int(d.WARMUP_EPOCHS),
                             warmup_factor=float(d.WARMUP_FACTOR), min_ratio=min_ratio)

        return {"lr_sched": torch.optim.lr_scheduler.LambdaLR(optimizer, factor)}

    def build_hooks(self):
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.EvalHook):
                h._func = self.validate_and_select  # model selection on the val split, never the test split
        return ret

    # --- model selection -----------------------------------------------------------------------------------------
    def read_best(self) -> Dict:
        if os.path.isfile(self.best_state_path):
            with open(self.best_state_path) as f:
                return json.load(f)
        return {}

    def _save_best(self, state: Dict) -> None:
        if not comm.is_main_process():
            return
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        model = _unwrap(self.model)
        tmp = self.best_path + ".tmp"
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "epoch": int(state["epoch"])}, tmp)
        os.replace(tmp, self.best_path)  # never a half-written best model behind a kill
        with open(self.best_state_path + ".tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(self.best_state_path + ".tmp", self.best_state_path)

    def validate_and_select(self):
        split = str(self.cfg.DMADAPTER.VAL_SPLIT)
        epoch = int(self.epoch) + 1
        if not split:
            self._save_best({"epoch": epoch, "split": None, "note": "no validation split: the last evaluated model"})
            return {}
        results = self.test(self.cfg, self.model, split=split)
        flat = results if SELECT_METRIC in results else None
        per_set = [flat] if flat is not None else [r for r in results.values() if isinstance(r, dict)]
        score = sum(float(r[SELECT_METRIC]) for r in per_set) / len(per_set)
        tie = sum(float(r[TIE_BREAK]) for r in per_set) / len(per_set)
        best = self.read_best()
        if not best or (score, tie) > (float(best.get("score", -1.0)), float(best.get("tie_break", -1.0))):
            self._save_best({"epoch": epoch, "split": split, "metric": SELECT_METRIC, "score": score,
                             "tie_break_metric": TIE_BREAK, "tie_break": tie})
            logger.info(f"epoch {epoch}: {split} {SELECT_METRIC} {score:.2f} is the best so far -> {self.best_path}")
        else:
            logger.info(f"epoch {epoch}: {split} {SELECT_METRIC} {score:.2f} (best {best['score']:.2f} at epoch "
                        f"{best['epoch']})")
        return {f"{split}_{k}": v for k, v in (flat or {}).items()} if flat else {}

    def train(self):
        super(DefaultTrainer, self).train(self.start_epoch, self.max_epoch, self.iters_per_epoch)
        comm.synchronize()
        model = _unwrap(self.model)
        if os.path.isfile(self.best_path):
            Checkpointer(model).load(self.best_path)
            logger.info(f"reloaded the best model {self.best_path} ({self.read_best()})")
        else:
            logger.warning(f"no {BEST_FILE} was written (TEST.EVAL_PERIOD {self.cfg.TEST.EVAL_PERIOD}): testing the "
                           f"last model")
        return self.test(self.cfg, self.model)

    # --- evaluation ----------------------------------------------------------------------------------------------
    @classmethod
    def test(cls, cfg, model, split: str = "test"):
        """Every caption of ``split`` of each DATASETS.TESTS reader queries all its images; fast-reid's table."""
        results = OrderedDict()
        device = "cuda" if str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available() else "cpu"
        for name in cfg.DATASETS.TESTS:
            data = text_reader(name, split)
            loader = TextImageTestLoader(cfg, data.query, data.gallery)
            res = inference_on_dataset(model, loader, TextImageEvaluator(device=device))
            if comm.is_main_process():
                logger.info(f"text-to-image retrieval on {name} ({split}): {len(data.query)} captions x "
                            f"{len(data.gallery)} images")
                table = OrderedDict(res)
                table["dataset"] = f"{name}/{split}"
                print_csv_format(table)
            results[name] = res
        return list(results.values())[0] if len(results) == 1 else results
