"""``DeMo`` (META_ARCH_REGISTRY): DeMo (Wang et al., AAAI 2025) for multi-modal RGB / NIR / TIR ReID.

One visual encoder shared by the three modalities (``encoders.py``) -> tokens per modality (B, 1 + N, C) ->
f_m: PIFE(tokens_m) (``pife.py``) or, without PIFE, the CLS token -> HDM on X_m = [f_m; patches_m] -> 7 decoupled
features D (``hdm.py``) -> ATMoE(D) (``atmoe.py``) -> moe feature. Without HDM but with ATMoE, the three f_m are
the experts' inputs (n = 3; the official code crashes there). Without ATMoE but with HDM, moe = cat(D) (Table 5,
model C).

Training (batch dict: ``modalities`` {name: (B, 3, H, W) 0-255}, ``targets``, ``camids``): per supervised feature
w_id * label-smoothed CE(classifier(BNNeck(x))) + w_tri * batch-hard triplet(x), on
- "joint" heads: x = cat[f_R, f_N, f_T] (``bottleneck`` / ``classifier``), RGBNT201's official config;
- "per_modality" heads: x = f_R, f_N, f_T each (``bottleneck_{r,n,t}`` / ``classifier_{r,n,t}``), the vehicle
  configs;
- and x = moe (``bottleneck_moe`` / ``classifier_moe``) when there is a moe branch.
Eval: test feature "concat" = cat[f_R, f_N, f_T (, moe)] or "moe" = moe (Table 5, model D), before the BNNecks,
L2-normalised as a whole once (rank by squared Euclidean distance). ``missing`` modalities have their NORMALISED
input replaced by zeros (Tables 3-4), the camera embedding still added.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY
from torch import nn

from .atmoe import ATMoE
from .hdm import HDM, DECOUPLED
from .heads import bnneck, classifier, id_and_triplet
from .pife import PIFE

__all__ = ["DeMo", "DeMoOutputs", "TEST_FEATURES", "HEAD_LAYOUTS", "MODALITY_KEYS"]

TEST_FEATURES = ("concat", "moe")
HEAD_LAYOUTS = ("joint", "per_modality")
MODALITY_KEYS = ("r", "n", "t")  # suffixes of the per-modality heads, in the model's modality order


@dataclass
class DeMoOutputs:
    """Intermediate features of one batch (B samples, C width).

    tokens: (3, B, 1 + N, C) encoder tokens per modality. modal: (B, 3, C) f_R, f_N, f_T. decoupled: (B, n, C)
    the MoE inputs (HDM's 7, or the 3 f_m without HDM) or None. moe: (B, D_moe) or None. gate: (B, H, n) ATMoE
    weights or None.
    """
    tokens: torch.Tensor
    modal: torch.Tensor
    decoupled: Optional[torch.Tensor]
    moe: Optional[torch.Tensor]
    gate: Optional[torch.Tensor]


@META_ARCH_REGISTRY.register()
class DeMo(nn.Module):
    """Batch dict -> loss dict (training) or L2-normalised test features (eval); see the module docstring."""

    @configurable
    def __init__(self, *, encoder: nn.Module, num_classes: int, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], modalities: Sequence[str] = ("RGB", "NI", "TI"), pife: bool = True,
                 hdm: bool = True, atmoe: bool = True, hdm_heads: int = 8, hdm_dropout: float = 0.1,
                 moe_heads: int = 4, gate: str = "attention", combine: str = "concat",
                 test_feature: str = "concat", heads: str = "joint", id_weight: float = 0.25,
                 triplet_weight: float = 1.0, label_smooth: float = 0.1, triplet_margin: float = 0.0,
                 missing: Sequence[str] = ()):
        """
        Args:
            encoder: token encoder shared by the modalities (``encoders.py``), with ``dim`` = C.
            num_classes: training identities (0: an evaluation-only model without classifiers).
            pixel_mean / pixel_std: normalisation of 0-255 inputs (127.5 / 127.5 = the official 0.5 / 0.5).
            modalities: keys of ``batch["modalities"]`` in R, N, T order.
            pife / hdm / atmoe: switch the three modules (Table 5: A none, B PIFE, C + HDM, D/E + ATMoE).
            hdm_heads / hdm_dropout: heads and attention dropout of HDM's cross-attentions.
            moe_heads: H of ATMoE. gate: "attention" or "simple". combine: "concat" or "add" (Table 6).
            test_feature: "concat" (model E) or "moe" (model D).
            heads: "joint" (one BNNeck on cat[f_R, f_N, f_T]) or "per_modality" (one per f_m).
            id_weight / triplet_weight: loss weights; label_smooth: CE epsilon; triplet_margin: 0 = soft margin.
            missing: modalities zeroed (after normalisation) at inference.
        """
        super().__init__()
        if len(modalities) != 3:
            raise ValueError(f"DeMo fuses three modalities (R, N, T); PLUGINS.DATA.MODALITIES is {list(modalities)}")
        if test_feature not in TEST_FEATURES:
            raise ValueError(f"DEMO.TEST_FEATURE must be one of {TEST_FEATURES}, got {test_feature!r}")
        if heads not in HEAD_LAYOUTS:
            raise ValueError(f"DEMO.HEADS must be one of {HEAD_LAYOUTS}, got {heads!r}")
        if test_feature == "moe" and not (hdm or atmoe):
            raise ValueError("DEMO.TEST_FEATURE 'moe' needs HDM or ATMoE (there is no moe feature without them)")
        self.encoder = encoder
        dim = int(encoder.dim)
        self.dim = dim
        self.modalities = tuple(modalities)
        self.use_pife, self.use_hdm, self.use_atmoe = bool(pife), bool(hdm), bool(atmoe)
        self.pife = nn.ModuleDict({m: PIFE(dim=dim) for m in self.modalities}) if pife else None
        self.hdm = HDM(dim=dim, num_heads=hdm_heads, dropout=hdm_dropout) if hdm else None
        n = len(DECOUPLED) if hdm else len(self.modalities)
        self.atmoe = ATMoE(dim=dim, num_features=n, num_heads=moe_heads, gate=gate, combine=combine) if atmoe else None
        self.moe_dim = self.atmoe.out_dim if atmoe else (n * dim if hdm else 0)
        self.test_feature, self.head_layout = test_feature, heads
        self.num_classes = int(num_classes)
        if heads == "joint":
            self.bottleneck = bnneck(3 * dim)
        else:
            for k in MODALITY_KEYS:
                setattr(self, f"bottleneck_{k}", bnneck(dim))
        if self.moe_dim:
            self.bottleneck_moe = bnneck(self.moe_dim)
        if self.num_classes > 0:
            if heads == "joint":
                self.classifier = classifier(3 * dim, self.num_classes)
            else:
                for k in MODALITY_KEYS:
                    setattr(self, f"classifier_{k}", classifier(dim, self.num_classes))
            if self.moe_dim:
                self.classifier_moe = classifier(self.moe_dim, self.num_classes)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.id_weight, self.triplet_weight = float(id_weight), float(triplet_weight)
        self.label_smooth, self.triplet_margin = float(label_smooth), float(triplet_margin)
        self.missing: tuple = ()
        self.set_missing(missing)

    @classmethod
    def from_config(cls, cfg):
        from .build import demo_kwargs_from_cfg

        return demo_kwargs_from_cfg(cfg)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def feature_dim(self) -> int:
        """Width of the test feature."""
        return self.moe_dim if self.test_feature == "moe" else 3 * self.dim + self.moe_dim

    def set_missing(self, missing: Sequence[str]) -> None:
        """Zero these modalities' normalised inputs at inference (Tables 3-4); () restores all of them."""
        unknown = [m for m in missing if m not in self.modalities]
        if unknown:
            raise ValueError(f"missing modalities {unknown} are not among {list(self.modalities)}")
        self.missing = tuple(missing)

    # --- features --------------------------------------------------------------------------------------------

    def normalized_inputs(self, batched_inputs: Dict, *, apply_missing: bool) -> list:
        """The three 0-255 modality images -> normalised (B, 3, H, W) each; missing ones -> zeros (after
        normalisation: a grey 127.5 image, not a black one)."""
        mods = batched_inputs.get("modalities")
        if not isinstance(mods, dict):
            raise KeyError(f"DeMo reads batch['modalities'] {{{', '.join(self.modalities)}}}; set "
                           f"PLUGINS.DATA.MODALITIES (batch keys: {sorted(batched_inputs)})")
        absent = [m for m in self.modalities if m not in mods]
        if absent:
            raise KeyError(f"batch['modalities'] lacks {absent} (has {sorted(mods)})")
        out = []
        for m in self.modalities:
            x = (mods[m].to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
            out.append(torch.zeros_like(x) if apply_missing and m in self.missing else x)
        return out

    def _camids(self, batched_inputs: Dict, batch: int) -> Optional[torch.Tensor]:
        camids = batched_inputs.get("camids")
        if camids is None:
            return None
        if not torch.is_tensor(camids):
            raise TypeError(f"DeMo's camera embedding needs integer camera ids, got {type(camids).__name__}")
        return camids.to(self.device).long().reshape(batch)

    def features(self, batched_inputs: Dict, *, apply_missing: Optional[bool] = None) -> DeMoOutputs:
        """Every intermediate feature of a batch (``apply_missing`` default: in eval mode only)."""
        if apply_missing is None:
            apply_missing = not self.training
        images = self.normalized_inputs(batched_inputs, apply_missing=apply_missing)
        b = images[0].shape[0]
        camids = self._camids(batched_inputs, b)
        tokens = self.encoder(torch.cat(images), None if camids is None else camids.repeat(len(images)))
        tokens = tokens.view(len(images), b, *tokens.shape[1:])  # (3, B, 1 + N, C): one pass for all three
        if self.pife is not None:
            modal = [self.pife[m](tokens[i]) for i, m in enumerate(self.modalities)]
        else:
            modal = [tokens[i, :, 0] for i in range(len(images))]
        decoupled = moe = gate = None
        if self.hdm is not None:
            decoupled = self.hdm([torch.cat([f.unsqueeze(1), tokens[i, :, 1:]], dim=1) for i, f in enumerate(modal)])
        elif self.atmoe is not None:
            decoupled = torch.stack(modal, dim=1)
        if self.atmoe is not None:
            moe, gate = self.atmoe(decoupled)
        elif decoupled is not None:
            moe = decoupled.flatten(1)
        return DeMoOutputs(tokens=tokens, modal=torch.stack(modal, dim=1), decoupled=decoupled, moe=moe, gate=gate)

    def test_features(self, out: DeMoOutputs) -> torch.Tensor:
        """(B, feature_dim) L2-normalised: cat[f_R, f_N, f_T (, moe)] or moe."""
        if self.test_feature == "moe":
            feat = out.moe
        else:
            feat = torch.cat([out.modal.flatten(1)] + ([out.moe] if out.moe is not None else []), dim=1)
        return F.normalize(feat, p=2, dim=1)

    # --- fast-reid interface ---------------------------------------------------------------------------------

    def forward(self, batched_inputs: Dict):
        if not self.training:
            return self.test_features(self.features(batched_inputs))
        return self.losses(batched_inputs)

    def losses(self, batched_inputs: Dict) -> Dict[str, torch.Tensor]:
        if self.num_classes <= 0:
            raise RuntimeError("this DeMo model has no classifiers (MODEL.HEADS.NUM_CLASSES 0): eval only")
        if "targets" not in batched_inputs:
            raise KeyError("Person ID annotation ('targets') missing in training batch")
        targets = batched_inputs["targets"].to(self.device)
        out = self.features(batched_inputs)
        groups = []
        if self.head_layout == "joint":
            groups.append((out.modal.flatten(1), self.bottleneck, self.classifier))
        else:
            groups += [(out.modal[:, i], getattr(self, f"bottleneck_{k}"), getattr(self, f"classifier_{k}"))
                       for i, k in enumerate(MODALITY_KEYS)]
        if out.moe is not None:
            groups.append((out.moe, self.bottleneck_moe, self.classifier_moe))
        ce, tri = zip(*(id_and_triplet(x, neck, cls, targets, label_smooth=self.label_smooth,
                                       margin=self.triplet_margin) for x, neck, cls in groups))
        losses = {"loss_id": self.id_weight * sum(ce)}
        if self.triplet_weight > 0:
            losses["loss_triplet"] = self.triplet_weight * sum(tri)
        return losses

    def extra_repr(self) -> str:
        return (f"modalities={list(self.modalities)}, pife={self.use_pife}, hdm={self.use_hdm}, "
                f"atmoe={self.use_atmoe}, heads={self.head_layout}, test_feature={self.test_feature}, "
                f"missing={list(self.missing)}")
