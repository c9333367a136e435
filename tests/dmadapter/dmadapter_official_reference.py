"""An independent re-implementation of the official DM-Adapter forward (an IRRA fork on OpenAI's CLIP), on the
official checkpoint layout, for parity tests. Imports nothing from ``plugins``: it works on a plain
``name -> tensor`` dict with the official key names (``base_model.*``, ``ln_3``, ``task_param``,
``feed_forward.{alpha,input_gate,task_gate,experts.J.{down,up}}``), in float32.

Block: x = x + attn(ln_1 x); h = ln_3 x; g = (1 - a) h W_g^T + a p W_d^T; top-k of g, softmax over the k;
y = sum_k w_k up(relu(down(h))); x = x + mlp(ln_2 x) + s y (QuickGELU MLP). Heads = width / 64 (OpenAI's rule).
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _ln(x: Tensor, sd: Dict[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)


def _linear(x: Tensor, sd: Dict[str, Tensor], name: str) -> Tensor:
    return x @ sd[f"{name}.weight"].t() + sd[f"{name}.bias"]


def _attention(x: Tensor, sd: Dict[str, Tensor], name: str, heads: int, causal: bool) -> Tensor:
    b, n, d = x.shape
    qkv = x @ sd[f"{name}.in_proj_weight"].t() + sd[f"{name}.in_proj_bias"]
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in qkv.split(d, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if causal:
        scores = scores + torch.full((n, n), float("-inf")).triu(1)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return _linear(out, sd, f"{name}.out_proj")


def _moe(h: Tensor, sd: Dict[str, Tensor], name: str, prompt: Tensor, top_k: int) -> Tensor:
    ff = f"{name}.feed_forward"
    a = sd[f"{ff}.alpha"]
    g = (1 - a) * (h @ sd[f"{ff}.input_gate.weight"].t()) + a * (prompt @ sd[f"{ff}.task_gate.weight"].t())
    top, idx = g.topk(top_k, dim=-1)
    w = top.softmax(-1)
    y = torch.zeros_like(h)
    j = 0
    while f"{ff}.experts.{j}.down.weight" in sd:
        e = _linear(torch.relu(_linear(h, sd, f"{ff}.experts.{j}.down")), sd, f"{ff}.experts.{j}.up")
        weight = (w * (idx == j)).sum(-1, keepdim=True)
        y = y + weight * e
        j += 1
    return y


def _block(x: Tensor, sd: Dict[str, Tensor], name: str, heads: int, causal: bool, scale: float,
           top_k: int) -> Tensor:
    x = x + _attention(_ln(x, sd, f"{name}.ln_1"), sd, f"{name}.attn", heads, causal)
    y = _moe(_ln(x, sd, f"{name}.ln_3"), sd, name, sd[f"{name}.task_param"], top_k)
    h = _linear(_ln(x, sd, f"{name}.ln_2"), sd, f"{name}.mlp.c_fc")
    h = h * torch.sigmoid(1.702 * h)
    return x + _linear(h, sd, f"{name}.mlp.c_proj") + scale * y


def official_state(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The checkpoint's state (``module.`` stripped), float32."""
    return {(k[7:] if k.startswith("module.") else k): v.float() for k, v in sd.items()}


def encode_image(sd: Dict[str, Tensor], images: Tensor, *, scale: float = 0.1, top_k: int = 2) -> Tensor:
    """normalised images (B, 3, H, W) -> (B, E)."""
    p = "base_model.visual"
    w = sd[f"{p}.conv1.weight"]
    x = F.conv2d(images, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd[f"{p}.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd[f"{p}.positional_embedding"]
    x = _ln(x, sd, f"{p}.ln_pre")
    heads = x.shape[-1] // 64
    n = len({k.split(".")[4] for k in sd if k.startswith(f"{p}.transformer.resblocks.")})
    for i in range(n):
        x = _block(x, sd, f"{p}.transformer.resblocks.{i}", heads, False, scale, top_k)
    return _ln(x[:, 0], sd, f"{p}.ln_post") @ sd[f"{p}.proj"]


def encode_text(sd: Dict[str, Tensor], tokens: Tensor, *, scale: float = 4.0, top_k: int = 2) -> Tensor:
    """token ids (B, 77) -> (B, E)."""
    p = "base_model"
    x = sd[f"{p}.token_embedding.weight"][tokens] + sd[f"{p}.positional_embedding"]
    heads = x.shape[-1] // 64
    n = len({k.split(".")[3] for k in sd if k.startswith(f"{p}.transformer.resblocks.")})
    for i in range(n):
        x = _block(x, sd, f"{p}.transformer.resblocks.{i}", heads, True, scale, top_k)
    x = _ln(x, sd, f"{p}.ln_final")
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ sd[f"{p}.text_projection"]


def official_key_shapes(*, width: int = 768, layers: int = 12, patch: int = 16, grid: Tuple[int, int] = (24, 8),
                        text_width: int = 512, text_layers: int = 12, embed: int = 512, vocab: int = 49408,
                        context: int = 77, experts: int = 6, ratio: int = 8) -> Dict[str, Tuple[int, ...]]:
    """Every key of an official DM-Adapter checkpoint and its shape (the layout of specs/clip.md)."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    v = "base_model.visual"
    shapes.update({f"{v}.class_embedding": (width,), f"{v}.positional_embedding": (1 + grid[0] * grid[1], width),
                   f"{v}.proj": (width, embed), f"{v}.conv1.weight": (width, 3, patch, patch)})
    for ln in ("ln_pre", "ln_post"):
        shapes.update({f"{v}.{ln}.weight": (width,), f"{v}.{ln}.bias": (width,)})

    def blocks(prefix: str, d: int, n: int) -> None:
        for i in range(n):
            b = f"{prefix}.resblocks.{i}"
            shapes.update({f"{b}.attn.in_proj_weight": (3 * d, d), f"{b}.attn.in_proj_bias": (3 * d,),
                           f"{b}.attn.out_proj.weight": (d, d), f"{b}.attn.out_proj.bias": (d,),
                           f"{b}.mlp.c_fc.weight": (4 * d, d), f"{b}.mlp.c_fc.bias": (4 * d,),
                           f"{b}.mlp.c_proj.weight": (d, 4 * d), f"{b}.mlp.c_proj.bias": (d,),
                           f"{b}.task_param": (d,), f"{b}.feed_forward.alpha": (),
                           f"{b}.feed_forward.input_gate.weight": (experts, d),
                           f"{b}.feed_forward.task_gate.weight": (experts, d)})
            for ln in ("ln_1", "ln_2", "ln_3"):
                shapes.update({f"{b}.{ln}.weight": (d,), f"{b}.{ln}.bias": (d,)})
            for j in range(experts):
                e = f"{b}.feed_forward.experts.{j}"
                shapes.update({f"{e}.down.weight": (d // ratio, d), f"{e}.down.bias": (d // ratio,),
                               f"{e}.up.weight": (d, d // ratio), f"{e}.up.bias": (d,)})

    blocks(f"{v}.transformer", width, layers)
    blocks("base_model.transformer", text_width, text_layers)
    shapes.update({"base_model.token_embedding.weight": (vocab, text_width),
                   "base_model.positional_embedding": (context, text_width),
                   "base_model.ln_final.weight": (text_width,), "base_model.ln_final.bias": (text_width,),
                   "base_model.text_projection": (text_width, embed)})
    # trainable in the official model, never used in its forward
    shapes.update({"base_model.vision_param": (width,), "base_model.text_param": (text_width,),
                   "base_model.co_vision_param": (width,), "base_model.v2i_proj.weight": (embed, width),
                   "base_model.v2i_proj.bias": (embed,)})
    return shapes


def _is_half(key: str) -> bool:
    """Mixed precision of the official model: Linear / Conv weights and biases, attention, projections in fp16."""
    return (key.endswith(("conv1.weight", "in_proj_weight", "in_proj_bias", ".proj", "text_projection"))
            or any(s in key for s in (".out_proj.", ".c_fc.", ".c_proj.")))


def random_official_checkpoint(shapes: Dict[str, Tuple[int, ...]], *, seed: int = 0,
                               module_prefix: bool = True) -> Dict[str, object]:
    """A random checkpoint ``{"model": state_dict}`` with the official keys, mixed precision, non-zero experts."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln_3.weight", "ln_pre.weight", "ln_post.weight",
                         "ln_final.weight")):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("feed_forward.alpha"):
            t = torch.rand(shape, generator=g)
        elif key.endswith("task_param"):
            t = torch.randn(shape, generator=g)
        elif key.endswith("token_embedding.weight") or key.endswith("positional_embedding"):
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            fan = shape[-1] if len(shape) > 1 else 1
            t = torch.randn(shape, generator=g) / math.sqrt(max(fan, 1)) * (0.5 if len(shape) == 1 else 1.0)
        state[("module." if module_prefix else "") + key] = t.half() if _is_half(key) else t
    return {"model": state, "epoch": 60}


def expected_dropped() -> List[str]:
    return ["base_model.co_vision_param", "base_model.text_param", "base_model.v2i_proj.bias",
            "base_model.v2i_proj.weight", "base_model.vision_param"]
