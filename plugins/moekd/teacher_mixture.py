"""The MoE-KD teacher (paper Sec. 3.1) and the fusions of the Table 5 ladder, cfg-free.

``MoETeacher``: frozen experts (``FrozenTeacher``) -> trainable adaptation layers to a common D = 2048 ->
fusion, one of
  "moe"      the paper's teacher: gate (``TopOneGate``) on [f_clip, f_align] (or on an image stem), feature
             sum_i g'_i f_i with top-1 renormalised g' (Eq. 2, 7-9);
  "concat"   Table 5 "+ CLIP": [f_base, f_clip] (4096) -> FC(4096 -> 2048);
  "average"  Table 5 "+ ALIGN": mean(f_base, f_clip, f_align) -> FC(2048 -> 2048);
where f_base is a trainable backbone's pooled feature (ResNet-50, 2048) for the two non-gated rows (a narrower
base, e.g. the demo's ResNet-18, is first mapped to 2048 by a trainable FC).

Expert outputs can be given (``cached``: from ``plugins.moekd.feature_cache``) instead of running the experts.
With ``sparse=True`` in eval and the "image" gate input, only the chosen expert runs per sample: the batch is
split by the gate's choice and each expert sees only its group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.teachers import FrozenTeacher
from .experts import ExpertOutput
from .gate import GateDecision, ImageGateStem, TopOneGate

__all__ = ["FUSIONS", "GATE_INPUTS", "MixtureOutput", "MoETeacher", "clip_adapter", "align_adapter"]

FUSIONS = ("moe", "concat", "average")
GATE_INPUTS = ("experts", "image")


def clip_adapter(in_dim: int, *, hidden: int = 1024, out_dim: int = 2048, dropout: float = 0.2) -> nn.Sequential:
    """phi_CLIP: FC(in -> hidden) + ReLU + Dropout + FC(hidden -> out) (768 -> 1024 -> 2048 in the paper)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))


def align_adapter(in_dim: int, *, out_dim: int = 2048) -> nn.Linear:
    """phi_ALIGN: FC(in -> out) (the paper's 2560 -> 2048; 640 -> 2048 on ALIGN-base's pooled feature)."""
    return nn.Linear(in_dim, out_dim)


@dataclass
class MixtureOutput:
    """feature: (B, D) the teacher feature; adapted: {expert: (B, D)} (rows of unselected samples are zero in
    sparse inference); attention: (B, h, w) the teacher's spatial map (the selected expert's, or the weighted
    mean of L2-normalised expert maps on the largest expert grid); gate: the gate's decision (None without a
    gate); ran: {expert: samples it ran on}."""
    feature: torch.Tensor
    adapted: Dict[str, torch.Tensor]
    attention: Optional[torch.Tensor]
    gate: Optional[GateDecision]
    ran: Dict[str, int]


class MoETeacher(nn.Module):
    """0-255 images (B, 3, H, W) [+ cached expert outputs] -> ``MixtureOutput`` (see the module docstring)."""

    def __init__(self, *, experts: Mapping[str, nn.Module], adapters: Mapping[str, nn.Module], fusion: str = "moe",
                 gate: Optional[TopOneGate] = None, gate_input: str = "experts",
                 gate_stem: Optional[ImageGateStem] = None, base: Optional[nn.Module] = None, base_dim: int = 2048,
                 feat_dim: int = 2048, pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
                 pixel_std: Sequence[float] = (58.395, 57.12, 57.375)):
        """
        Args:
            experts: name -> expert module (``CLIPExpert`` / ``ALIGNExpert``), in gate order; wrapped frozen here.
            adapters: name -> trainable adaptation layer (expert width -> feat_dim), same names.
            fusion: "moe", "concat" or "average".
            gate: the top-1 gate ("moe" only); its input width must match ``gate_input``.
            gate_input: "experts" (concatenated adapted features, the paper) or "image" (``gate_stem``).
            base: trainable backbone (images normalised with pixel_mean/std -> (B, base_dim, h, w)) for
                "concat" / "average".
            feat_dim: D of the adapted features and the teacher feature (2048).
            pixel_mean / pixel_std: 0-255 statistics for the base backbone and the gate stem (ImageNet).
        """
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"MOEKD.FUSION must be one of {FUSIONS}, got {fusion!r}")
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"MOEKD.GATE.INPUT must be one of {GATE_INPUTS}, got {gate_input!r}")
        if list(experts) != list(adapters):
            raise ValueError(f"experts {list(experts)} and adapters {list(adapters)} must name the same experts")
        need = {"moe": 2, "concat": 1, "average": 2}[fusion]
        if len(experts) != need:
            raise ValueError(f"fusion {fusion!r} takes {need} expert(s), got {list(experts)}")
        self.names = list(experts)
        self.experts = nn.ModuleDict({n: e if isinstance(e, FrozenTeacher) else FrozenTeacher(e)
                                      for n, e in experts.items()})
        self.adapters = nn.ModuleDict(dict(adapters))
        self.fusion, self.gate_input, self.feat_dim = fusion, gate_input, int(feat_dim)
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean), dtype=torch.float32).view(1, -1, 1, 1),
                             False)
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std), dtype=torch.float32).view(1, -1, 1, 1),
                             False)
        self.gate = self.gate_stem = self.base = self.base_proj = self.fuse = None
        if fusion == "moe":
            if gate is None:
                raise ValueError("fusion 'moe' needs a gate")
            want = gate_stem.out_dim if gate_input == "image" else self.feat_dim * len(self.names)
            if gate_input == "image" and gate_stem is None:
                raise ValueError("gate input 'image' needs a gate stem")
            if gate.in_dim != want or gate.num_experts != len(self.names):
                raise ValueError(f"the gate takes {gate.in_dim} -> {gate.num_experts}, the mixture gives {want} -> "
                                 f"{len(self.names)}")
            self.gate, self.gate_stem = gate, gate_stem if gate_input == "image" else None
        else:
            if base is None:
                raise ValueError(f"fusion {fusion!r} fuses a trainable base backbone's feature: give `base`")
            self.base = base
            # a base narrower than D (e.g. ResNet-18's 512) is mapped to D first; ResNet-50's 2048 is used as is
            self.base_proj = nn.Identity() if base_dim == self.feat_dim else nn.Linear(base_dim, self.feat_dim)
            fused_in = 2 * self.feat_dim if fusion == "concat" else self.feat_dim
            self.fuse = nn.Linear(fused_in, self.feat_dim)
        self.sparse = False  # eval with the "image" gate: run only the chosen expert per sample

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def run_experts(self, images: torch.Tensor) -> Dict[str, ExpertOutput]:
        """Every expert on every image (frozen, no grad)."""
        return {n: self.experts[n](images.to(self.device)) for n in self.names}

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        own = sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
        return own if trainable_only else own + sum(e.num_parameters() for e in self.experts.values())

    @staticmethod
    def _mix_maps(maps: Sequence[Optional[torch.Tensor]], weights: torch.Tensor) -> torch.Tensor:
        """sum_k w_k * L2normalise(resize(A_k)) on the largest grid; maps (B, h_k, w_k), weights (B, K)."""
        present = [m for m in maps if m is not None]
        size = max((tuple(m.shape[-2:]) for m in present), key=lambda s: s[0] * s[1])
        out = 0.0
        for k, m in enumerate(maps):
            if m is None:
                continue
            if tuple(m.shape[-2:]) != size:
                m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
            m = F.normalize(m.flatten(1), dim=1).view(m.shape[0], *size)
            out = out + weights[:, k].detach().view(-1, 1, 1) * m
        return out

    def forward(self, images: torch.Tensor, cached: Optional[Mapping[str, ExpertOutput]] = None) -> MixtureOutput:
        if self.fusion == "moe" and self.gate_input == "image" and self.sparse and not self.training \
                and cached is None:
            return self._sparse_forward(images)
        outs = dict(cached) if cached is not None else self.run_experts(images)
        missing = [n for n in self.names if n not in outs]
        if missing:
            raise KeyError(f"expert outputs missing for {missing}")
        adapted = {n: self.adapters[n](outs[n].pooled.to(self.device, torch.float32)) for n in self.names}
        b = next(iter(adapted.values())).shape[0]
        ran = {n: (0 if cached is not None else b) for n in self.names}
        maps = [outs[n].attention.to(self.device, torch.float32) for n in self.names]
        if self.fusion == "moe":
            gate_in = (self.gate_stem(self.normalise(images)) if self.gate_input == "image"
                       else torch.cat([adapted[n] for n in self.names], dim=1))
            decision = self.gate.decide(gate_in)
            feature = sum(decision.weights[:, k:k + 1] * adapted[n] for k, n in enumerate(self.names))
            return MixtureOutput(feature, adapted, self._mix_maps(maps, decision.weights), decision, ran)
        base = self.base(self.normalise(images))
        f_base = self.base_proj(base.mean(dim=(2, 3)) if base.dim() == 4 else base)
        if self.fusion == "concat":
            feature = self.fuse(torch.cat([f_base, adapted[self.names[0]]], dim=1))
        else:
            feature = self.fuse(torch.stack([f_base, *adapted.values()]).mean(dim=0))
        uniform = torch.full((b, len(self.names)), 1.0 / len(self.names), device=self.device)
        return MixtureOutput(feature, adapted, self._mix_maps(maps, uniform), None, ran)

    @torch.no_grad()
    def _sparse_forward(self, images: torch.Tensor) -> MixtureOutput:
        """Eval with the image gate: the gate decides first, then each expert runs on its group only."""
        images = images.to(self.device)
        decision = self.gate.decide(self.gate_stem(self.normalise(images)))
        b = images.shape[0]
        feature = torch.zeros(b, self.feat_dim, device=self.device)
        adapted, maps, ran = {}, [], {}
        for k, n in enumerate(self.names):
            idx = (decision.choice == k).nonzero(as_tuple=True)[0]
            ran[n] = int(idx.numel())
            adapted[n] = torch.zeros(b, self.feat_dim, device=self.device)
            if idx.numel() == 0:
                maps.append(None)
                continue
            out = self.experts[n](images.index_select(0, idx))
            f = self.adapters[n](out.pooled.float())
            adapted[n][idx] = f
            feature[idx] = decision.weights[idx, k:k + 1] * f
            full = torch.zeros(b, *out.attention.shape[-2:], device=self.device)
            full[idx] = out.attention.float()
            maps.append(full)
        return MixtureOutput(feature, adapted, self._mix_maps(maps, decision.weights), decision, ran)
