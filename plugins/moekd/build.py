"""Config translation for MoE-KD (the one place where ``MOEKD.*`` / ``MODEL.*`` become modules): the experts,
the adaptation layers, the gate, the base backbone of the ladder rows and the student backbone."""
from __future__ import annotations

import logging
from typing import Dict

import torch

from fastreid.modeling.backbones.resnet import build_resnet_backbone
from torch import nn

from ..modeling.backbones.clip import CLIPImageEncoder, clip_from_cfg
from .experts import ALIGNExpert, CLIPExpert, build_align_vision
from .gate import ImageGateStem, TopOneGate
from .teacher_mixture import MoETeacher, align_adapter, clip_adapter

__all__ = ["resnet_from_cfg", "resnet_width", "build_clip_expert", "build_align_expert", "build_mixture",
           "experts_of_fusion"]

logger = logging.getLogger("fastreid." + __name__)


def resnet_width(depth: str) -> int:
    """Channels of the last stage of fast-reid's ResNet of ``depth``."""
    return 512 if depth in ("18x", "34x") else 2048


def resnet_from_cfg(cfg, depth: str) -> nn.Module:
    """fast-reid's ``build_resnet_backbone`` with ``MODEL.BACKBONE.*`` and DEPTH ``depth``."""
    c = cfg.clone()
    c.defrost()
    c.MODEL.BACKBONE.DEPTH = depth
    return build_resnet_backbone(c)


def _seeded(seed: int):
    """A frozen expert without weights is a fixed random feature extractor: the same one every time it is built
    (teacher stage, student stage, evaluation, cache key), whatever the global RNG state."""
    rng = torch.random.fork_rng(devices=[])
    rng.__enter__()
    torch.manual_seed(int(seed))
    return rng


def build_clip_expert(cfg) -> CLIPExpert:
    """E_CLIP: ``MODEL.BACKBONE.CLIP.*`` at ``INPUT.SIZE_TRAIN`` (its weights when WEIGHTS is set; otherwise
    random init from ``MOEKD.EXPERT_INIT_SEED``)."""
    rng = _seeded(cfg.MOEKD.EXPERT_INIT_SEED)
    try:
        clip = clip_from_cfg(cfg, load_weights=bool(cfg.MODEL.BACKBONE.CLIP.WEIGHTS))
    finally:
        rng.__exit__(None, None, None)
    return CLIPExpert(CLIPImageEncoder(clip.visual), pixel_mean=list(cfg.MOEKD.CLIP.PIXEL_MEAN),
                      pixel_std=list(cfg.MOEKD.CLIP.PIXEL_STD))


def build_align_expert(cfg) -> ALIGNExpert:
    a = cfg.MOEKD.ALIGN
    rng = _seeded(cfg.MOEKD.EXPERT_INIT_SEED)
    try:
        vision = build_align_vision(a.WEIGHTS, width_coefficient=a.WIDTH_COEFFICIENT,
                                    depth_coefficient=a.DEPTH_COEFFICIENT,
                                    calibration_size=[int(v) for v in cfg.INPUT.SIZE_TEST])
    finally:
        rng.__exit__(None, None, None)
    if not a.WEIGHTS:
        logger.info("ALIGN expert: random init (MOEKD.ALIGN.WEIGHTS is empty), BatchNorm statistics calibrated on "
                    "seeded noise")
    return ALIGNExpert(vision, pixel_mean=list(a.PIXEL_MEAN), pixel_std=list(a.PIXEL_STD))


def experts_of_fusion(fusion: str) -> tuple:
    return ("clip",) if fusion == "concat" else ("clip", "align")


def build_mixture(cfg) -> MoETeacher:
    """The teacher of ``MOEKD.FUSION`` with its experts, adaptation layers, gate / base backbone."""
    m = cfg.MOEKD
    fusion, dim = m.FUSION, int(m.FEAT_DIM)
    experts: Dict[str, nn.Module] = {"clip": build_clip_expert(cfg)}
    if "align" in experts_of_fusion(fusion):
        experts["align"] = build_align_expert(cfg)
    adapters = {"clip": clip_adapter(experts["clip"].out_dim, hidden=int(m.CLIP.ADAPTER_HIDDEN), out_dim=dim,
                                     dropout=float(m.CLIP.DROPOUT))}
    if "align" in experts:
        adapters["align"] = align_adapter(experts["align"].out_dim, out_dim=dim)
    kwargs = dict(pixel_mean=list(cfg.MODEL.PIXEL_MEAN), pixel_std=list(cfg.MODEL.PIXEL_STD), feat_dim=dim)
    if fusion == "moe":
        g = m.GATE
        stem = ImageGateStem(size=list(g.STEM_SIZE), width=int(g.STEM_WIDTH)) if g.INPUT == "image" else None
        in_dim = stem.out_dim if stem is not None else dim * len(experts)
        gate = TopOneGate(in_dim=in_dim, num_experts=len(experts), hidden=[int(h) for h in g.HIDDEN],
                          tau_train=float(g.TAU_TRAIN), tau_test=float(g.TAU_TEST),
                          straight_through=bool(g.STRAIGHT_THROUGH))
        mixture = MoETeacher(experts=experts, adapters=adapters, fusion=fusion, gate=gate, gate_input=g.INPUT,
                             gate_stem=stem, **kwargs)
        mixture.sparse = bool(g.SPARSE_INFERENCE)
        return mixture
    return MoETeacher(experts=experts, adapters=adapters, fusion=fusion, base=resnet_from_cfg(cfg, m.BASE_DEPTH),
                      base_dim=resnet_width(m.BASE_DEPTH), **kwargs)
