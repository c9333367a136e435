"""``DeMoLadder`` (TRAINER_REGISTRY): Table 5's ablation ladder and Tables 3-4's missing-modality table in one run.

    OUTPUT_DIR/
      step_A/ step_B/ step_C/ step_E/   one DeMoTrainer run each (A: CLS only, B: + PIFE, C: + HDM,
                                        E: + ATMoE); D is step E's model inferring with the moe feature only
      results.json|md|csv               mAP, R-1, R-5, R-10 of every step on DATASETS.TESTS[0]
      missing_modality.csv|md           M(R) .. M(NT) and their average for DEMO.LADDER.MISSING_TABLE_STEP

Each step is seeded by ``plugins.engine.stages.run_stage`` (from ``PLUGINS.SEED`` and the step's title, so a step
does not depend on the steps before it nor on resuming). A step folder holding ``done.json`` is complete and
skipped; an interrupted step resumes from its last checkpoint (``plugins.engine.stages``); rows already in
``results.json`` are not measured again.
"""
from __future__ import annotations

import logging
import os
from typing import Dict

from fastreid.utils import comm
from fastreid.utils.checkpoint import Checkpointer

from ..engine.results import ResultsTable
from ..engine.stages import FINAL_CHECKPOINT, run_stage
from ..registry import TRAINER_REGISTRY
from .config import LADDER_STEPS
from .evaluation import evaluate_model, missing_modality_table, write_missing_table
from .trainer import DeMoTrainer

__all__ = ["DeMoLadder", "ladder_step_cfg", "TRAINED_AS"]

logger = logging.getLogger("fastreid." + __name__)

# step -> the step whose trained model it evaluates (D and E share one training).
TRAINED_AS = {"A": "A", "B": "B", "C": "C", "D": "E", "E": "E"}
ROW_NAMES = {"A": "A baseline (CLS)", "B": "B + PIFE", "C": "C + HDM", "D": "D + ATMoE (f only)",
             "E": "E + ATMoE (concat)"}


def ladder_step_cfg(cfg, step: str, *, output_dir: str = ""):
    """``cfg`` switched to ladder step ``step`` (Table 5), trained by ``DeMoTrainer`` in ``output_dir``."""
    if step not in LADDER_STEPS:
        raise ValueError(f"ladder step {step!r} unknown; choose from {list(LADDER_STEPS)}")
    pife, hdm, atmoe, feature = LADDER_STEPS[step]
    c = cfg.clone()
    c.defrost()
    c.DEMO.PIFE, c.DEMO.HDM, c.DEMO.ATMOE, c.DEMO.TEST_FEATURE = pife, hdm, atmoe, feature
    c.PLUGINS.TRAINER = "DeMoTrainer"
    if output_dir:
        c.OUTPUT_DIR = output_dir
    c.freeze()
    return c


@TRAINER_REGISTRY.register()
class DeMoLadder:
    """Trains the steps of ``DEMO.LADDER.STEPS`` and writes the tables (see the module docstring)."""

    def __init__(self, cfg):
        steps = list(cfg.DEMO.LADDER.STEPS)
        unknown = [s for s in steps if s not in LADDER_STEPS]
        if unknown or not steps:
            raise ValueError(f"DEMO.LADDER.STEPS {steps}: choose a non-empty subset of {list(LADDER_STEPS)}")
        missing_step = cfg.DEMO.LADDER.MISSING_TABLE_STEP
        if missing_step and missing_step not in LADDER_STEPS:
            raise ValueError(f"DEMO.LADDER.MISSING_TABLE_STEP {missing_step!r} is not a ladder step")
        self.cfg, self.steps, self.missing_step = cfg, steps, missing_step
        self.table = ResultsTable(cfg.OUTPUT_DIR)
        self.start_epoch, self.max_epoch = 0, 1

    @classmethod
    def build_model(cls, cfg):
        return DeMoTrainer.build_model(cfg)

    @classmethod
    def test(cls, cfg, model):
        return DeMoTrainer.test(cfg, model)

    def resume_or_load(self, resume: bool = True) -> None:
        """Each step resumes on its own (done.json / last checkpoint)."""

    def _step_dir(self, step: str) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, f"step_{TRAINED_AS[step]}")

    def _trained(self, step: str) -> Dict[str, float]:
        """Train (or skip) the model step ``step`` evaluates; its metrics with its own training test feature."""
        trained = TRAINED_AS[step]
        c = ladder_step_cfg(self.cfg, trained, output_dir=self._step_dir(step))
        return run_stage(f"DeMo ladder step {trained}", c, DeMoTrainer)

    def load_step_model(self, step: str, **overrides):
        """The trained model of ``step`` with its test feature (and ``overrides``: DEMO keys) in eval mode."""
        c = ladder_step_cfg(self.cfg, step, output_dir=self._step_dir(step))
        if overrides:
            c.defrost()
            c.merge_from_list([x for kv in overrides.items() for x in kv])
            c.freeze()
        model = DeMoTrainer.build_model(c)
        Checkpointer(model).load(os.path.join(self._step_dir(step), FINAL_CHECKPOINT))
        return model.eval(), c

    def train(self) -> Dict[str, Dict]:
        for step in self.steps:
            name = ROW_NAMES[step]
            metrics = self._trained(step)
            if name in self.table:
                continue
            if step != TRAINED_AS[step]:  # D: E's model with the moe feature only
                model, c = self.load_step_model(step)
                metrics = evaluate_model(c, model)
            if comm.is_main_process():
                self.table.add(name, "Table 5", metrics)
        results = {"ladder": dict(self.table.rows)}
        if comm.is_main_process():
            table = self.table.write_tables([ROW_NAMES[s] for s in self.steps],
                                            title=f"DeMo ladder on {self.cfg.DATASETS.TESTS[0]}")
            logger.info(f"DeMo ladder (Table 5) on {self.cfg.DATASETS.TESTS[0]}:\n{table}")
        if self.missing_step:
            if self.missing_step not in self.steps:
                self._trained(self.missing_step)
            model, c = self.load_step_model(self.missing_step)
            rows = missing_modality_table(c, model)
            table = write_missing_table(rows, self.cfg.OUTPUT_DIR,
                                        title=f"Missing modalities, step {self.missing_step}")
            if comm.is_main_process():
                logger.info(f"missing-modality table (step {self.missing_step}):\n{table}")
            results["missing"] = rows
        return results
