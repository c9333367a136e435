"""The two frozen foundation-model experts of MoE-KD, as cfg-free modules: 0-255 images (B, 3, H, W) ->
``ExpertOutput(pooled (B, D_e), attention (B, h, w))``. Each normalises with its own pretraining statistics.

- ``CLIPExpert``: the project's open_clip image tower (``CLIPImageEncoder``, no camera embedding). ``pooled`` is
  the CLS token after ``ln_post`` (width D: 768 for ViT-B/16, the paper's "768 -> 1024 -> 2048"); the spatial map
  is the patch tokens after ``ln_post`` reshaped to the patch grid (gh x gw), summed |.| over channels.
- ``ALIGNExpert``: transformers' ``AlignVisionModel`` (ALIGN's EfficientNet image tower). ``pooled`` is its
  ``pooler_output`` (mean over the last stage, 640-d for ALIGN-base / ``AlignVisionConfig()``): the paper's 2560 is
  EfficientNet-B7's head-conv width (``hidden_dim``), which ALIGN's vision model does not have: the released
  ALIGN image embedding IS this 640-d pooled feature. The spatial map is the last stage (``last_hidden_state``,
  stride 32), summed |.| over channels.

Both are held as ``FrozenTeacher`` by their owner (never trained, never in a checkpoint).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..modeling.backbones.clip import CLIPImageEncoder

__all__ = ["ExpertOutput", "CLIPExpert", "ALIGNExpert", "build_align_vision", "calibrate_batchnorm",
           "EXPERT_NAMES"]

EXPERT_NAMES = ("clip", "align")  # the gate's expert order (k = 0, 1)


@dataclass
class ExpertOutput:
    """pooled: (B, D_e) the expert's global feature (the adaptation layer's input); attention: (B, h, w) the
    channel sum of absolute activations of its last spatial map (attention transfer's A = sum_c |F^c|)."""
    pooled: torch.Tensor
    attention: torch.Tensor


class _Normalise(nn.Module):
    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(pixel_mean), dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(list(pixel_std), dtype=torch.float32).view(1, -1, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.mean.device, torch.float32) - self.mean) / self.std


class CLIPExpert(nn.Module):
    """CLIP image tower: 0-255 images -> CLS after ``ln_post`` (B, D) + patch-token attention map (B, gh, gw)."""

    def __init__(self, encoder: CLIPImageEncoder, *, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__()
        if encoder.uses_camids:
            raise ValueError("the CLIP expert is a frozen foundation model: build its encoder without SIE")
        self.encoder = encoder
        self.normalise = _Normalise(pixel_mean, pixel_std)
        self.out_dim = encoder.width

    def forward(self, images: torch.Tensor) -> ExpertOutput:
        out = self.encoder(self.normalise(images), use_sie=False)
        gh, gw = self.encoder.grid_size
        patches = out.tokens[:, 1:]  # (B, gh*gw, D)
        attention = patches.abs().sum(dim=-1).view(patches.shape[0], gh, gw)
        return ExpertOutput(pooled=out.cls, attention=attention)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, size: Sequence[int], *, batches: int = 2, batch_size: int = 8,
                        seed: int = 0) -> nn.Module:
    """Set every BatchNorm's running mean / variance to the statistics of its input on seeded uniform noise in
    [-1, 1] (the normalised pixel range) of spatial ``size`` (H, W); ``model`` is left in eval mode.

    Why: a randomly initialised ``AlignVisionModel`` (transformers' init: N(0, 0.02) convs) in eval mode has
    BatchNorms with the default statistics (mean 0, var 1), i.e. identities, so every conv shrinks the signal
    and the pooled output is ~1e-27 for every image (measured: the demo's ALIGN features were a constant, the gate
    routed 8% of the images to it, and those images became unretrievable). Recalibrated, each BN normalises its
    input to unit scale and the network is a real fixed random feature extractor (raw pooled features: 18 mAP on
    the demo domain, chance 4)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    g = torch.Generator().manual_seed(int(seed))
    model.train()
    try:
        for _ in range(int(batches)):
            noise = torch.rand(int(batch_size), 3, int(size[0]), int(size[1]), generator=g) * 2 - 1
            model(pixel_values=noise.to(next(model.parameters()).device))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()
    return model


def build_align_vision(weights: str = "", *, width_coefficient: float = 0.0, depth_coefficient: float = 0.0,
                       image_size: int = 0, calibration_size: Optional[Sequence[int]] = (256, 256)) -> nn.Module:
    """transformers ``AlignVisionModel``: from a local ``weights`` folder (``from_pretrained``, offline; an
    ALIGN checkpoint such as kakaobrain/align-base saved locally) or, with ``weights`` empty, randomly initialised
    from ``AlignVisionConfig()`` with the given non-zero overrides (a small ALIGN for tests and the demo), its
    BatchNorm statistics then calibrated on noise of ``calibration_size`` (H, W) (``calibrate_batchnorm``; None:
    transformers' statistics as initialised, a network whose outputs vanish)."""
    from transformers import AlignVisionConfig, AlignVisionModel

    if weights:
        if not os.path.isdir(weights):
            raise FileNotFoundError(f"MOEKD.ALIGN.WEIGHTS '{weights}' is not a folder (a transformers ALIGN / "
                                    f"AlignVisionModel checkpoint saved with save_pretrained)")
        return AlignVisionModel.from_pretrained(weights, local_files_only=True)
    overrides = {k: v for k, v in (("width_coefficient", float(width_coefficient)),
                                   ("depth_coefficient", float(depth_coefficient)),
                                   ("image_size", int(image_size))) if v}
    model = AlignVisionModel(AlignVisionConfig(**overrides))
    return calibrate_batchnorm(model, calibration_size) if calibration_size else model.eval()


class ALIGNExpert(nn.Module):
    """ALIGN's image tower: 0-255 images -> ``pooler_output`` (B, C) + last-stage attention map (B, h, w)."""

    def __init__(self, vision: nn.Module, *, pixel_mean: Sequence[float] = (127.5,) * 3,
                 pixel_std: Sequence[float] = (127.5,) * 3):
        """``vision``: a transformers ``AlignVisionModel``; mean/std 127.5 map 0-255 to [-1, 1] as ALIGN's image
        processor (rescale 1/127.5, offset -1, no further normalisation)."""
        super().__init__()
        self.vision = vision
        self.normalise = _Normalise(pixel_mean, pixel_std)
        self.out_dim = int(self._pooled_width(vision))

    @staticmethod
    def _pooled_width(vision: nn.Module) -> int:
        from transformers.models.align.modeling_align import round_filters

        return round_filters(vision.config, vision.config.out_channels[-1])

    def forward(self, images: torch.Tensor) -> ExpertOutput:
        out = self.vision(pixel_values=self.normalise(images))
        last = out.last_hidden_state  # (B, C, h, w)
        pooled = out.pooler_output.flatten(1)
        return ExpertOutput(pooled=pooled, attention=last.abs().sum(dim=1))


def expert_output_of(pooled: torch.Tensor, attention: torch.Tensor,
                     device: Optional[torch.device] = None) -> ExpertOutput:
    """An ``ExpertOutput`` from cached tensors."""
    return ExpertOutput(pooled=pooled.to(device) if device else pooled,
                        attention=attention.to(device) if device else attention)
