"""``DMAdapter`` (META_ARCH_REGISTRY): DM-Adapter (Liu et al., AAAI 2025) on the project's open_clip towers.

Both CLIP towers are frozen; an SMA (``sma.SMABlock``: ``n`` bottleneck experts, top-``k`` per token, the
domain-aware router) is added to every block of both. Parameters: ``image_encoder.visual.*`` and
``text_encoder.*`` with open_clip's names; per block ``ln_3`` and ``sma.{experts.J.{down,up},router.*}``.

Training batch (``images`` 0-255, ``text_tokens`` one caption per image, ``targets`` identities) ->
``loss_sdm`` (SDM image<->text) and ``loss_aux`` = w * sum over every block of the load-balancing loss.
Eval: a batch with ``images`` -> image features (B, E); a batch with only ``text_tokens`` -> text features (B, E);
not normalised (the evaluator normalises).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from fastreid.config import configurable
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY
from torch import nn

from ..layers.adapter import BottleneckAdapter
from ..layers.moe import SparseMixture
from ..modeling.backbones.clip import CLIPImageEncoder, CLIPTextEncoder, clip_from_cfg
from ..modeling.losses.sdm import sdm_loss
from ..registry import ROUTER_REGISTRY
from .masking import mask_caption_tokens
from .sma import SMABlock, inject_sma, sma_blocks

__all__ = ["DMAdapter", "build_sma"]


def build_sma(width: int, *, num_experts: int, top_k: int, router: str, bottleneck_ratio: int,
              alpha_init: float = 0.5) -> nn.Module:
    """One block's adapter: ``num_experts`` bottleneck experts (width -> width / ratio -> width, up-projection
    zero) behind a ROUTER_REGISTRY router; one expert is a plain adapter without a router."""
    if width % bottleneck_ratio:
        raise ValueError(f"DMADAPTER.BOTTLENECK_RATIO {bottleneck_ratio} does not divide the width {width}")
    experts = [BottleneckAdapter(width, width // bottleneck_ratio, activation="relu") for _ in range(num_experts)]
    if num_experts == 1:
        return experts[0]
    if router not in ROUTER_REGISTRY._obj_map:
        raise KeyError(f"DMADAPTER.ROUTER {router!r} is not in ROUTER_REGISTRY ({sorted(ROUTER_REGISTRY._obj_map)})")
    kwargs = {"dim": width, "num_experts": num_experts, "top_k": top_k}
    if router == "DomainAwareRouter":
        kwargs["alpha_init"] = alpha_init
    return SparseMixture(experts, ROUTER_REGISTRY.get(router)(**kwargs))


@META_ARCH_REGISTRY.register()
class DMAdapter(nn.Module):
    """Batch dict -> loss dict (training) or features (eval); see the module docstring."""

    @configurable
    def __init__(self, *, image_encoder: CLIPImageEncoder, text_encoder: CLIPTextEncoder, pixel_mean, pixel_std,
                 num_experts: int = 6, top_k: int = 2, router: str = "DomainAwareRouter", alpha_init: float = 0.5,
                 bottleneck_ratio: int = 8, image_scale: float = 0.1, text_scale: float = 4.0,
                 aux_weight: float = 0.5, aux_full_context: bool = True, temperature: float = 0.02,
                 mask_captions: bool = True,
                 mask_prob: float = 0.15, mask_token: int = 49405):
        """
        Args:
            image_encoder / text_encoder: the CLIP towers (frozen here; SMA injected into their blocks).
            pixel_mean / pixel_std: per-channel normalisation of 0-255 images (CLIP's x 255 for OpenAI weights).
            num_experts / top_k / router / alpha_init / bottleneck_ratio: the SMA (see ``build_sma``).
            image_scale / text_scale: s of each tower.
            aux_weight: weight of the summed load-balancing loss (0: not computed).
            aux_full_context: the training text pass runs all context positions (the official aux loss averages
                over the padding too); False: up to the batch's longest caption.
            temperature: tau of the SDM loss.
            mask_captions / mask_prob / mask_token: BERT-style masking of training captions.
        """
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"DMADAPTER.TOP_K must be in [1, NUM_EXPERTS={num_experts}], got {top_k}")
        self.image_encoder = image_encoder.requires_grad_(False)
        self.text_encoder = text_encoder.requires_grad_(False)
        if image_encoder.uses_camids:
            raise ValueError("DM-Adapter has no camera embedding: set MODEL.BACKBONE.CLIP.NUM_CAMERAS/NUM_VIEWS 0")
        if image_encoder.embed_dim != text_encoder.embed_dim:
            raise ValueError(f"image embedding {image_encoder.embed_dim} != text embedding {text_encoder.embed_dim}")

        def make(width):
            return build_sma(width, num_experts=num_experts, top_k=top_k, router=router,
                             bottleneck_ratio=bottleneck_ratio, alpha_init=alpha_init)

        inject_sma(image_encoder.visual.transformer, make, scale=image_scale)
        inject_sma(text_encoder.transformer, make, scale=text_scale)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.num_experts, self.top_k = int(num_experts), int(top_k)
        self.aux_weight, self.temperature = float(aux_weight), float(temperature)
        self.aux_full_context = bool(aux_full_context)
        self.mask_captions, self.mask_prob, self.mask_token = bool(mask_captions), float(mask_prob), int(mask_token)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.DMADAPTER
        clip = clip_from_cfg(cfg, load_weights=bool(cfg.MODEL.BACKBONE.PRETRAIN))
        c = cfg.MODEL.BACKBONE.CLIP
        if int(c.NUM_CAMERAS) or int(c.NUM_VIEWS):
            raise ValueError("DM-Adapter has no camera embedding: set MODEL.BACKBONE.CLIP.NUM_CAMERAS/NUM_VIEWS 0")
        return {"image_encoder": CLIPImageEncoder(clip.visual), "text_encoder": CLIPTextEncoder(clip),
                "pixel_mean": list(cfg.MODEL.PIXEL_MEAN), "pixel_std": list(cfg.MODEL.PIXEL_STD),
                "num_experts": int(d.NUM_EXPERTS), "top_k": int(d.TOP_K), "router": str(d.ROUTER),
                "alpha_init": float(d.ALPHA_INIT), "bottleneck_ratio": int(d.BOTTLENECK_RATIO),
                "image_scale": float(d.IMAGE_SCALE), "text_scale": float(d.TEXT_SCALE),
                "aux_weight": float(d.AUX_WEIGHT), "aux_full_context": bool(d.AUX_FULL_CONTEXT), "temperature": float(d.TEMPERATURE),
                "mask_captions": bool(d.MASK_CAPTIONS), "mask_prob": float(d.MASK_PROB),
                "mask_token": int(d.MASK_TOKEN)}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # --- parts ---------------------------------------------------------------------------------------------------

    def image_blocks(self) -> List[SMABlock]:
        return sma_blocks(self.image_encoder.visual.transformer)

    def text_blocks(self) -> List[SMABlock]:
        return sma_blocks(self.text_encoder.transformer)

    def blocks(self) -> List[SMABlock]:
        """Every SMA block, image tower first (12 + 12 for ViT-B/16)."""
        return self.image_blocks() + self.text_blocks()

    def aux_loss(self) -> Optional[torch.Tensor]:
        """Sum of the load-balancing losses of the last forward over every block (None: no router)."""
        losses = [b.routing.aux_loss for b in self.blocks() if b.routing is not None and b.routing.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    # --- features ------------------------------------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """0-255 images -> normalised (never in place)."""
        return (images.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """0-255 images (B, 3, H, W) -> CLS after ln_post @ proj (B, E)."""
        return self.image_encoder(self.normalize(images)).proj

    def text_features(self, tokens: torch.Tensor, *, full_context: bool = False) -> torch.Tensor:
        """token ids (B, L) -> EOT after ln_final @ text_projection (B, E). ``full_context`` runs the padding
        too (the official load-balancing loss averages over it)."""
        return self.text_encoder(tokens.to(self.device), full_context=full_context)

    # --- fast-reid interface -------------------------------------------------------------------------------------

    def forward(self, batched_inputs: Dict):
        if not self.training:
            if "images" in batched_inputs:
                return self.image_features(batched_inputs["images"])
            if "text_tokens" in batched_inputs:
                return self.text_features(batched_inputs["text_tokens"])
            raise KeyError(f"an eval batch needs 'images' or 'text_tokens', got {sorted(batched_inputs)}")
        return self.losses(batched_inputs)

    def losses(self, batched_inputs: Dict) -> Dict[str, torch.Tensor]:
        for key in ("images", "text_tokens", "targets"):
            if key not in batched_inputs:
                raise KeyError(f"a DM-Adapter training batch needs '{key}' (PLUGINS.DATA.TEXT True for "
                               f"text_tokens), got {sorted(batched_inputs)}")
        tokens = batched_inputs["text_tokens"].to(self.device)
        if self.mask_captions:
            tokens = mask_caption_tokens(tokens, prob=self.mask_prob, mask_id=self.mask_token)
        image = self.image_features(batched_inputs["images"])
        text = self.text_features(tokens, full_context=self.aux_full_context)
        losses = {"loss_sdm": sdm_loss(image, text, batched_inputs["targets"], temperature=self.temperature)}
        if self.aux_weight > 0:
            aux = self.aux_loss()  # every block holds the routing of its tower's pass above
            if aux is not None:
                losses["loss_aux"] = self.aux_weight * aux
        return losses
