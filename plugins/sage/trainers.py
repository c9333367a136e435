"""SAGE's training stages as fast-reid trainers (each usable on its own with ``tools/train_net.py``).

- ``SAGEExpertTrainer`` (stage 1): freeze the source model ``MODEL.WEIGHTS``, add one LoRA expert, train it on the
  unlabelled target ``DATASETS.NAMES`` with clustering pseudo-labels; at the end the expert is written to
  ``OUTPUT_DIR/expert`` (``layout.EXPERT_SUBDIR``: peft layout + neck).
- ``SAGEGateTrainer`` (stage 2): mean of ``SAGE.SOURCE_WEIGHTS`` + the experts ``SAGE.EXPERT_DIRS`` gated per layer
  (``SAGE.GATE.KIND``); trains the gates on pseudo-labels.
Stage 0 is fast-reid's ``DefaultTrainer`` unchanged.
"""
from __future__ import annotations

import os

from fastreid.utils import comm

from ..engine.pseudo_label_hook import unwrap_model
from ..engine.pseudo_label_trainer import PseudoLabelTrainer
from ..registry import TRAINER_REGISTRY
from .builders import build_expert_model, build_gated_model, save_expert_with_neck
from .layout import EXPERT_SUBDIR

__all__ = ["SAGEExpertTrainer", "SAGEGateTrainer"]


class _NoWeightsReload:
    """The model builder already loaded what it needs from its own keys. fast-reid's ``resume_or_load`` would
    load ``MODEL.WEIGHTS`` again through the checkpointer after the adapters/gates changed the module layout, so
    only resuming from this stage's own last checkpoint is kept."""

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            super().resume_or_load(resume=True)


@TRAINER_REGISTRY.register()
class SAGEExpertTrainer(_NoWeightsReload, PseudoLabelTrainer):
    """Stage 1: one LoRA expert for the source model ``MODEL.WEIGHTS`` (``SAGE.LORA.*``), trained on the target."""

    @classmethod
    def build_model(cls, cfg):
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("SAGEExpertTrainer adapts a source model: set MODEL.WEIGHTS to its checkpoint")
        return build_expert_model(cfg, cfg.MODEL.WEIGHTS)

    def train(self):
        results = super().train()
        self.export_expert()
        return results

    def export_expert(self) -> str:
        """Write the trained adapter + neck to ``OUTPUT_DIR/expert`` (rank 0); returns the folder."""
        directory = os.path.join(self.cfg.OUTPUT_DIR, EXPERT_SUBDIR)
        if comm.is_main_process():
            save_expert_with_neck(unwrap_model(self.model), directory)
        comm.synchronize()
        return directory


@TRAINER_REGISTRY.register()
class SAGEGateTrainer(_NoWeightsReload, PseudoLabelTrainer):
    """Stage 2: train the per-layer gates of the merged model (backbone, experts and neck frozen)."""

    @classmethod
    def build_model(cls, cfg):
        sources, experts = list(cfg.SAGE.SOURCE_WEIGHTS), list(cfg.SAGE.EXPERT_DIRS)
        if not sources or len(sources) != len(experts):
            raise ValueError(f"SAGEGateTrainer needs one SAGE.SOURCE_WEIGHTS entry per SAGE.EXPERT_DIRS entry, got "
                             f"{len(sources)} and {len(experts)}")
        if cfg.SAGE.GATE.KIND == "avg":
            raise ValueError("SAGE.GATE.KIND 'avg' (LoRA-Avg) has no gate to train; evaluate it instead")
        return build_gated_model(cfg, sources, experts)
