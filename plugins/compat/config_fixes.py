"""Config-level host fixes, applied after the config is merged (they need to see MODEL.DEVICE / AMP)."""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def adjust_config_for_host(cfg) -> list[str]:
    """Turn off options the host cannot run here; return a line per change (also logged).

    - SOLVER.AMP.ENABLED on a CPU device: fast-reid's AMPTrainer uses CUDA GradScaler and asserts CUDA.
    """
    changes = []
    on_cpu = cfg.MODEL.DEVICE == "cpu" or not torch.cuda.is_available()
    if on_cpu and cfg.SOLVER.AMP.ENABLED:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SOLVER.AMP.ENABLED = False
        if was_frozen:
            cfg.freeze()
        changes.append("SOLVER.AMP.ENABLED -> False (AMPTrainer needs CUDA; running on CPU)")
    for line in changes:
        logger.warning("host compat: %s", line)
    return changes
