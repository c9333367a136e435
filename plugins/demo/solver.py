"""DeMo's optimizer and learning-rate schedule (the official solver, on fast-reid's engine).

Adam with L2 weight decay (``SOLVER.WEIGHT_DECAY``) on every parameter; learning rates per group:
- the visual encoder's weights: ``DEMO.SOLVER.BACKBONE_LR`` (5e-6), biases not doubled;
- the camera embedding: ``SOLVER.BASE_LR`` (3.5e-4);
- every new module (PIFE, HDM, ATMoE, BNNecks, classifiers): ``SOLVER.BASE_LR``, biases x ``SOLVER.BIAS_LR_FACTOR``.
Schedule: timm's ``CosineLRScheduler`` stepped once per epoch: linear warm-up of every group from
``WARMUP_LR`` (so the backbone warms DOWN to 5e-6), cosine to ``MIN_LR``, each epoch's lr times a random factor
in [1 - NOISE_PCT, 1 + NOISE_PCT] drawn with seed ``NOISE_SEED + epoch`` (the official scheduler).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from timm.scheduler import CosineLRScheduler

__all__ = ["demo_param_groups", "build_demo_optimizer", "EpochCosineLR", "NoWarmup", "build_demo_scheduler"]


def demo_param_groups(model, *, base_lr: float, backbone_lr: float, bias_lr_factor: float,
                      weight_decay: float) -> List[Dict]:
    """One group per trainable parameter (as the official code), named for the log."""
    encoder = model.encoder
    camera = {id(p) for p in getattr(encoder, "camera_parameters", [])}
    in_encoder = {id(p) for p in encoder.parameters()}
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in camera:
            lr = base_lr
        elif id(p) in in_encoder:
            lr = backbone_lr
        else:
            lr = base_lr * (bias_lr_factor if name.endswith(".bias") else 1.0)
        groups.append({"params": [p], "lr": lr, "initial_lr": lr, "weight_decay": weight_decay, "name": name})
    return groups


def build_demo_optimizer(cfg, model) -> torch.optim.Optimizer:
    if cfg.SOLVER.OPT != "Adam":
        raise ValueError(f"DeMo trains with Adam (the official optimizer); SOLVER.OPT is {cfg.SOLVER.OPT!r}")
    groups = demo_param_groups(model, base_lr=float(cfg.SOLVER.BASE_LR), backbone_lr=float(cfg.DEMO.SOLVER.BACKBONE_LR),
                               bias_lr_factor=float(cfg.SOLVER.BIAS_LR_FACTOR),
                               weight_decay=float(cfg.SOLVER.WEIGHT_DECAY))
    return torch.optim.Adam(groups, lr=float(cfg.SOLVER.BASE_LR))


class EpochCosineLR(CosineLRScheduler):
    """timm's cosine schedule with ``step()`` (no argument) advancing one epoch, as fast-reid's LRScheduler hook
    calls it after every epoch; the epoch counter is part of ``state_dict`` (resumes continue the schedule)."""

    def __init__(self, optimizer, **kwargs):
        super().__init__(optimizer, t_in_epochs=True, **kwargs)
        self.epoch = 0

    def step(self, epoch=None, metric=None) -> None:
        self.epoch = self.epoch + 1 if epoch is None else int(epoch)
        super().step(self.epoch, metric)


class NoWarmup:
    """fast-reid's per-iteration warm-up slot, unused: the epoch scheduler warms up."""

    def step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_demo_scheduler(cfg, optimizer) -> Dict[str, object]:
    s = cfg.DEMO.SOLVER
    epochs = int(cfg.SOLVER.MAX_EPOCH)
    if epochs <= 0:
        raise ValueError(f"SOLVER.MAX_EPOCH must be > 0, got {epochs}")
    noise = float(s.NOISE_PCT)
    sched = EpochCosineLR(optimizer, t_initial=epochs, lr_min=float(s.MIN_LR), warmup_lr_init=float(s.WARMUP_LR),
                          warmup_t=int(s.WARMUP_EPOCHS), cycle_limit=1, noise_range_t=0 if noise > 0 else None,
                          noise_pct=noise if noise > 0 else 0.67, noise_std=1.0, noise_seed=int(s.NOISE_SEED))
    return {"lr_sched": sched, "warmup_sched": NoWarmup()}
