"""An independent re-implementation of the OFFICIAL CLIP-ReID stage-2 model (Li et al., AAAI 2023; the authors'
code: ``model/make_model_clipreid.py`` and the modified OpenAI CLIP in ``model/clip/model.py``), for parity tests.

It reproduces what the official code computes, in its own layout and on its own state dict (the 316 keys of a
ViT-B/16 checkpoint with the SIE camera embedding, loaded with ``strict=True``):

- OpenAI CLIP's transformer: sequence-first (LND) tensors, ``nn.MultiheadAttention`` (packed ``in_proj``),
  pre-norm blocks ``x + attn(ln_1 x)``, ``x + mlp(ln_2 x)``, QuickGELU, LayerNorm computed in float32;
- image tower: patch conv -> CLS prepended -> ``x[:, 0] += SIE_COE * cv_embed[cam]`` -> + positional embedding ->
  ``ln_pre`` -> blocks; ``x11`` = the output of all blocks but the last (the official code slices ``[:11]`` of
  ViT-B/16's 12), ``x12`` = ``ln_post`` of the last block's output, ``xproj = x12 @ proj``; CLS of each;
- BNNecks ``bottleneck`` / ``bottleneck_proj`` and bias-free classifiers; test feature ``cat[x12, proj]``
  (TEST.NECK_FEAT 'before') or ``cat[BN(x12), BN_proj(proj)]`` ('after');
- text: prompt = [token_prefix | cls_ctx[label] | token_suffix] + positional embedding -> causal transformer ->
  ``ln_final`` -> the token at ``argmax`` of the template ids ``@ text_projection``.

It deliberately imports nothing from ``plugins`` (it checks that code) and uses no tokenizer: the template ids
of "A photo of a X X X X person." are written out. Shapes other than ViT-B/16's are parameters
(:class:`OfficialDims`) so that the same code runs on small random models.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEMPLATE_IDS", "OfficialDims", "VIT_B16", "OfficialCLIPReID", "tokenized_template",
           "encode_text", "random_official_state", "build_official"]

# OpenAI BPE ids of "A photo of a X X X X person." (SOT ... EOT); the four 343 are the learned X positions.
TEMPLATE_IDS = (49406, 320, 1125, 539, 320, 343, 343, 343, 343, 2533, 269, 49407)
PREFIX_LEN = 5  # "<sot> a photo of a" (the official n_ctx + 1)
NUM_CLS_CTX = 4  # learned tokens per identity


@dataclass(frozen=True)
class OfficialDims:
    """Shapes of an official model (defaults: ViT-B/16 at 256x128, Market-1501 with 6 cameras)."""
    width: int = 768  # image tower width (in_planes)
    layers: int = 12
    heads: int = 12  # the official code uses width // 64
    patch: int = 16  # patch size = stride (MODEL.STRIDE_SIZE 16)
    h_res: int = 16  # patch grid (256 / 16) x (128 / 16)
    w_res: int = 8
    embed_dim: int = 512  # in_planes_proj
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    num_classes: int = 751
    camera_num: int = 6
    view_num: int = 1
    sie_camera: bool = True  # MODEL.SIE_CAMERA
    sie_view: bool = False  # MODEL.SIE_VIEW

    @property
    def image_size(self):
        return self.h_res * self.patch, self.w_res * self.patch


VIT_B16 = OfficialDims()


def tokenized_template(context_length: int = 77) -> torch.Tensor:
    """(1, context_length) ids of the official prompt template, zero-padded."""
    ids = torch.zeros(1, context_length, dtype=torch.long)
    ids[0, :len(TEMPLATE_IDS)] = torch.tensor(TEMPLATE_IDS)
    return ids


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (OpenAI CLIP's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block on (L, N, D) tensors; ``attn_mask`` is a plain attribute (not in the state dict)."""

    def __init__(self, d_model: int, n_head: int, attn_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)  # batch_first=False: (L, N, D)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, 4 * d_model)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * d_model, d_model))]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """The official image tower: images -> (x11, x12, xproj), each (N, 1 + patches, .)."""

    def __init__(self, d: OfficialDims):
        super().__init__()
        scale = d.width ** -0.5
        self.conv1 = nn.Conv2d(3, d.width, kernel_size=d.patch, stride=d.patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(d.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(d.h_res * d.w_res + 1, d.width))
        self.ln_pre = LayerNorm(d.width)
        self.transformer = Transformer(d.width, d.layers, d.heads)
        self.ln_post = LayerNorm(d.width)
        self.proj = nn.Parameter(scale * torch.randn(d.width, d.embed_dim))

    def forward(self, x: torch.Tensor, cv_emb: Optional[torch.Tensor] = None):
        x = self.conv1(x)  # (N, D, gh, gw)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (N, gh*gw, D)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1)
        if cv_emb is not None:
            x[:, 0] = x[:, 0] + cv_emb
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        blocks = self.transformer.resblocks
        x11 = blocks[:len(blocks) - 1](x)
        x12 = blocks[len(blocks) - 1](x11)
        x11, x12 = x11.permute(1, 0, 2), x12.permute(1, 0, 2)
        x12 = self.ln_post(x12)
        return x11, x12, x12 @ self.proj


class TextEncoder(nn.Module):
    """The official ``TextEncoder``: prompt embeddings (B, L, d) + template ids -> (B, E)."""

    def __init__(self, d: OfficialDims):
        super().__init__()
        mask = torch.empty(d.context_length, d.context_length).fill_(float("-inf")).triu_(1)
        self.transformer = Transformer(d.text_width, d.text_layers, d.text_heads, attn_mask=mask)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(d.context_length, d.text_width))
        self.ln_final = LayerNorm(d.text_width)
        self.text_projection = nn.Parameter(d.text_width ** -0.5 * torch.randn(d.text_width, d.embed_dim))

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        x = prompts + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ self.text_projection


class PromptLearner(nn.Module):
    """Buffers ``token_prefix`` / ``token_suffix`` (the template's token embeddings around the X's, saved in the
    checkpoint) and the learned ``cls_ctx`` (num_classes, 4, d)."""

    def __init__(self, d: OfficialDims, token_embedding: torch.Tensor):
        super().__init__()
        tokenized = tokenized_template(d.context_length)
        embedding = F.embedding(tokenized, token_embedding.float())  # (1, L, d)
        self.tokenized_prompts = tokenized  # an attribute, not in the state dict
        self.cls_ctx = nn.Parameter(0.02 * torch.randn(d.num_classes, NUM_CLS_CTX, d.text_width))
        self.register_buffer("token_prefix", embedding[:, :PREFIX_LEN].clone())
        self.register_buffer("token_suffix", embedding[:, PREFIX_LEN + NUM_CLS_CTX:].clone())

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        ctx = self.cls_ctx[label]
        b = label.shape[0]
        return torch.cat([self.token_prefix.expand(b, -1, -1), ctx, self.token_suffix.expand(b, -1, -1)], dim=1)


class OfficialCLIPReID(nn.Module):
    """The official ``build_transformer`` (ViT branch) with the official forward signature."""

    def __init__(self, d: OfficialDims, token_embedding: torch.Tensor, *, sie_coe: float = 3.0,
                 neck_feat: str = "before"):
        super().__init__()
        self.dims, self.sie_coe, self.neck_feat = d, float(sie_coe), neck_feat
        self.view_num = d.view_num
        self.classifier = nn.Linear(d.width, d.num_classes, bias=False)
        self.classifier_proj = nn.Linear(d.embed_dim, d.num_classes, bias=False)
        self.bottleneck = nn.BatchNorm1d(d.width)
        self.bottleneck_proj = nn.BatchNorm1d(d.embed_dim)
        self.image_encoder = VisionTransformer(d)
        rows = {(True, True): d.camera_num * d.view_num, (True, False): d.camera_num,
                (False, True): d.view_num}.get((d.sie_camera, d.sie_view))
        if rows:
            self.cv_embed = nn.Parameter(0.02 * torch.randn(rows, d.width))
        self.prompt_learner = PromptLearner(d, token_embedding)
        self.text_encoder = TextEncoder(d)

    def forward(self, x=None, label=None, get_image=False, get_text=False, cam_label=None, view_label=None):
        if get_text:
            return self.text_encoder(self.prompt_learner(label), self.prompt_learner.tokenized_prompts)
        if get_image:
            return self.image_encoder(x)[2][:, 0]
        if cam_label is not None and view_label is not None:
            cv_embed = self.sie_coe * self.cv_embed[cam_label * self.view_num + view_label]
        elif cam_label is not None:
            cv_embed = self.sie_coe * self.cv_embed[cam_label]
        elif view_label is not None:
            cv_embed = self.sie_coe * self.cv_embed[view_label]
        else:
            cv_embed = None
        x11, x12, xproj = self.image_encoder(x, cv_embed)
        img_feature_last, img_feature, img_feature_proj = x11[:, 0], x12[:, 0], xproj[:, 0]
        feat = self.bottleneck(img_feature)
        feat_proj = self.bottleneck_proj(img_feature_proj)
        if self.training:
            return ([self.classifier(feat), self.classifier_proj(feat_proj)],
                    [img_feature_last, img_feature, img_feature_proj], img_feature_proj)
        if self.neck_feat == "after":
            return torch.cat([feat, feat_proj], dim=1)
        return torch.cat([img_feature, img_feature_proj], dim=1)


def encode_text(text_encoder: TextEncoder, token_embedding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's ``encode_text`` with the official model's text modules and ``token_embedding`` (V, d)."""
    return text_encoder(F.embedding(tokens, token_embedding.float()), tokens)


def random_official_state(d: OfficialDims, *, seed: int = 0, vocab_size: int = 49408):
    """(state dict in the official layout, token embedding (vocab_size, d_text)) with every entry random: LayerNorm
    and BatchNorm affine parameters and running statistics too, and an SIE table large enough to move features, so
    that a swapped or dropped tensor shows in the features."""
    g = torch.Generator().manual_seed(seed)
    token_embedding = 0.02 * torch.randn(vocab_size, d.text_width, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = OfficialCLIPReID(d, token_embedding)
    state = model.state_dict()
    for key, value in state.items():
        if not value.is_floating_point() or key.startswith("prompt_learner.token_"):
            continue
        noise = torch.randn(value.shape, generator=g)
        if key.endswith("running_var"):
            value.copy_(0.5 + torch.rand(value.shape, generator=g))
        elif key.endswith("running_mean") or key == "cv_embed":
            value.copy_(0.5 * noise)
        elif ("ln_" in key or "bottleneck" in key) and key.endswith(".weight"):
            value.copy_(1.0 + 0.1 * noise)
        elif key.endswith("bias") or "ln_" in key:
            value.copy_(0.1 * noise)
        elif key.startswith("classifier"):
            value.copy_(0.001 * noise)
    return OrderedDict(state), token_embedding


def build_official(d: OfficialDims, state: Dict[str, torch.Tensor], token_embedding: torch.Tensor, *,
                   sie_coe: float = 3.0, neck_feat: str = "before") -> OfficialCLIPReID:
    """The official model in eval mode with ``state`` loaded strictly (``module.`` prefix stripped)."""
    model = OfficialCLIPReID(d, token_embedding, sie_coe=sie_coe, neck_feat=neck_feat)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
