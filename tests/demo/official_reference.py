"""An independent re-implementation of the OFFICIAL DeMo forward at test time (924973292/DeMo), written from the
method's spec for parity tests. It works on the official state dict itself (its key names: ``BACKBONE.base.*``,
``BACKBONE.cv_embed``, ``{rgb,nir,tir}_reduce``, ``generalFusion.*``, ``bottleneck*``, ``classifier*``) with plain
tensor algebra, and deliberately imports nothing from ``plugins``:

- CLIP image tower (OpenAI layout): patch conv (no bias) -> CLS = class_embedding + SIE_COE * cv_embed[cam] ->
  + positional embedding -> ln_pre -> pre-norm blocks (packed in_proj attention, QuickGELU MLP) -> ln_post on ALL
  tokens -> @ proj on ALL tokens;
- PIFE: QuickGELU(Linear(LN(cat[CLS, mean patches])));
- HDM: seven single-query multi-head cross-attentions over [f_m; patches_m] sets, order r, n, t, rn, rt, nt, rnt;
- ATMoE: gate softmax_j(q_h . k_{j,h} / sqrt(c)) with q = q_(BN(QuickGELU(linear_re x))), k = k_(D); expert (h, j)
  = BN(QuickGELU(Linear)) on chunk h of D_j; feature-major concatenation;
- test feature cat[f_R, f_N, f_T, moe] L2-normalised; a missing modality's NORMALISED input is zeros.
:func:`official_keys` lists the official key layout with shapes, for any size (ViT-B/16 by default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

__all__ = ["Dims", "official_keys", "random_official_state", "official_feature"]

QUERIES = ("r", "n", "t", "rn", "rt", "nt", "rnt")
SETS = {"r": (0,), "n": (1,), "t": (2,), "rn": (0, 1), "rt": (0, 2), "nt": (1, 2), "rnt": (0, 1, 2)}


@dataclass(frozen=True)
class Dims:
    width: int = 768
    layers: int = 12
    heads: int = 12
    patch: int = 16
    grid: Tuple[int, int] = (16, 8)
    embed: int = 512
    mlp: int = 3072
    cams: int = 4
    ids: int = 171
    moe_heads: int = 4
    hdm_heads: int = 8
    vehicle_heads: bool = False  # bottleneck_{r,n,t} / classifier_{r,n,t} instead of one joint head


def official_keys(d: Dims = Dims()) -> Dict[str, Tuple[int, ...]]:
    """Official key -> shape (trainable parameters and BN buffers)."""
    w, e = d.width, d.embed
    keys: Dict[str, Tuple[int, ...]] = {"BACKBONE.cv_embed": (d.cams, 1, w)}
    base = {"class_embedding": (w,), "positional_embedding": (d.grid[0] * d.grid[1] + 1, w), "proj": (w, e),
            "conv1.weight": (w, 3, d.patch, d.patch), "ln_pre.weight": (w,), "ln_pre.bias": (w,),
            "ln_post.weight": (w,), "ln_post.bias": (w,)}
    for i in range(d.layers):
        p = f"transformer.resblocks.{i}."
        base.update({p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "attn.in_proj_weight": (3 * w, w),
                     p + "attn.in_proj_bias": (3 * w,), p + "attn.out_proj.weight": (w, w),
                     p + "attn.out_proj.bias": (w,), p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                     p + "mlp.c_fc.weight": (d.mlp, w), p + "mlp.c_fc.bias": (d.mlp,),
                     p + "mlp.c_proj.weight": (w, d.mlp), p + "mlp.c_proj.bias": (w,)})
    keys.update({"BACKBONE.base." + k: v for k, v in base.items()})
    for m in ("rgb", "nir", "tir"):
        keys.update({f"{m}_reduce.0.weight": (2 * e,), f"{m}_reduce.0.bias": (2 * e,),
                     f"{m}_reduce.1.weight": (e, 2 * e), f"{m}_reduce.1.bias": (e,)})
    for q in QUERIES:
        keys.update({f"generalFusion.{q}_token": (1, 1, e), f"generalFusion.{q}.in_proj_weight": (3 * e, e),
                     f"generalFusion.{q}.in_proj_bias": (3 * e,), f"generalFusion.{q}.out_proj.weight": (e, e),
                     f"generalFusion.{q}.out_proj.bias": (e,)})
    c = e // d.moe_heads

    def bn(prefix, n):
        return {prefix + "weight": (n,), prefix + "bias": (n,), prefix + "running_mean": (n,),
                prefix + "running_var": (n,), prefix + "num_batches_tracked": ()}
    for h in range(d.moe_heads):
        for j in range(7):
            p = f"generalFusion.moe.experts.{h}.expertHead.{j}.mlp."
            keys.update({p + "0.weight": (c, c), p + "0.bias": (c,), **bn(p + "2.", c)})
    g = "generalFusion.moe.gating_network.gate."
    keys.update({g + "linear_re.0.weight": (e, 7 * e), g + "linear_re.0.bias": (e,), **bn(g + "linear_re.2.", e),
                 g + "q_.weight": (e, e), g + "k_.weight": (e, e)})
    if d.vehicle_heads:
        for k in ("r", "n", "t"):
            keys.update({**bn(f"bottleneck_{k}.", e), f"classifier_{k}.weight": (d.ids, e)})
    else:
        keys.update({**bn("bottleneck.", 3 * e), "classifier.weight": (d.ids, 3 * e)})
    keys.update({**bn("bottleneck_moe.", 7 * e), "classifier_moe.weight": (d.ids, 7 * e)})
    return keys


def random_official_state(d: Dims, *, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A random official state dict (weights ~ N(0, 0.02..0.1), LN/BN weights near 1, running stats varied)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_keys(d).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif (".ln_" in key or "_reduce.0." in key or "ln_p" in key or ".mlp.2." in key or "linear_re.2." in key
              or key.startswith("bottleneck")) and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            std = 0.1 if ("token" in key or "cv_embed" in key or "class_embedding" in key) else 0.05
            state[key] = std * torch.randn(shape, generator=g)
    return state


def _ln(x, s, p, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * s[p + "weight"] + s[p + "bias"]


def _bn_eval(x, s, p, eps=1e-5):
    return (x - s[p + "running_mean"]) / torch.sqrt(s[p + "running_var"] + eps) * s[p + "weight"] + s[p + "bias"]


def _qgelu(x):
    return x * torch.sigmoid(1.702 * x)


def _mha(q_in, kv, w_in, b_in, w_out, b_out, heads):
    """Multi-head attention, queries (B, Lq, E), keys = values (B, L, E), packed in_proj (3E, E)."""
    e = q_in.shape[-1]
    q = q_in @ w_in[:e].t() + b_in[:e]
    k = kv @ w_in[e:2 * e].t() + b_in[e:2 * e]
    v = kv @ w_in[2 * e:].t() + b_in[2 * e:]
    b, lq, L, hd = q.shape[0], q.shape[1], kv.shape[1], e // heads
    q = q.view(b, lq, heads, hd).transpose(1, 2)
    k = k.view(b, L, heads, hd).transpose(1, 2)
    v = v.view(b, L, heads, hd).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(b, lq, e)
    return out @ w_out.t() + b_out


def _visual(s, x, cams, d: Dims, sie_coe: float):
    p = "BACKBONE.base."
    x = torch.nn.functional.conv2d(x, s[p + "conv1.weight"], stride=d.patch)
    x = x.flatten(2).transpose(1, 2)
    cls = s[p + "class_embedding"] + sie_coe * s["BACKBONE.cv_embed"][cams, 0]
    x = torch.cat([cls[:, None], x], 1) + s[p + "positional_embedding"]
    x = _ln(x, s, p + "ln_pre.")
    for i in range(d.layers):
        b = f"{p}transformer.resblocks.{i}."
        h = _ln(x, s, b + "ln_1.")
        x = x + _mha(h, h, s[b + "attn.in_proj_weight"], s[b + "attn.in_proj_bias"], s[b + "attn.out_proj.weight"],
                     s[b + "attn.out_proj.bias"], d.heads)
        h = _ln(x, s, b + "ln_2.")
        h = _qgelu(h @ s[b + "mlp.c_fc.weight"].t() + s[b + "mlp.c_fc.bias"])
        x = x + h @ s[b + "mlp.c_proj.weight"].t() + s[b + "mlp.c_proj.bias"]
    return _ln(x, s, p + "ln_post.") @ s[p + "proj"]


@torch.no_grad()
def official_feature(state: Dict[str, torch.Tensor], images: Sequence[torch.Tensor], cams: torch.Tensor, d: Dims, *,
                     sie_coe: float = 1.0, missing: Sequence[int] = ()) -> torch.Tensor:
    """Normalised images [R, N, T] (each (B, 3, H, W)) + camera ids (B,) -> the official test feature (B, 10 C),
    L2-normalised. ``missing``: indices of modalities whose normalised input is zeros."""
    s = {k[len("module."):] if k.startswith("module.") else k: v.float() for k, v in state.items()}
    feats: List[torch.Tensor] = []
    seqs = []
    for i, (name, x) in enumerate(zip(("rgb", "nir", "tir"), images)):
        x = torch.zeros_like(x) if i in missing else x
        tok = _visual(s, x, cams, d, sie_coe)
        pooled = torch.cat([tok[:, 0], tok[:, 1:].mean(1)], -1)
        f = _qgelu(_ln(pooled, s, f"{name}_reduce.0.") @ s[f"{name}_reduce.1.weight"].t() + s[f"{name}_reduce.1.bias"])
        feats.append(f)
        seqs.append(torch.cat([f[:, None], tok[:, 1:]], 1))
    decoupled = []
    for q in QUERIES:
        kv = torch.cat([seqs[i] for i in SETS[q]], 1)
        query = s[f"generalFusion.{q}_token"].expand(kv.shape[0], -1, -1)
        g = f"generalFusion.{q}."
        decoupled.append(_mha(query, kv, s[g + "in_proj_weight"], s[g + "in_proj_bias"], s[g + "out_proj.weight"],
                              s[g + "out_proj.bias"], d.hdm_heads)[:, 0])
    D = torch.stack(decoupled, 1)  # (B, 7, E)
    b, n, e = D.shape
    H, c = d.moe_heads, e // d.moe_heads
    gp = "generalFusion.moe.gating_network.gate."
    red = _bn_eval(_qgelu(D.reshape(b, n * e) @ s[gp + "linear_re.0.weight"].t() + s[gp + "linear_re.0.bias"]),
                   s, gp + "linear_re.2.")
    q = (red @ s[gp + "q_.weight"].t()).view(b, H, c)
    k = (D @ s[gp + "k_.weight"].t()).view(b, n, H, c)
    gate = torch.softmax(torch.einsum("bhc,bjhc->bhj", q, k) / math.sqrt(c), dim=-1)  # (B, H, 7)
    moe = torch.zeros(b, n * e)
    for h in range(H):
        for j in range(n):
            p = f"generalFusion.moe.experts.{h}.expertHead.{j}.mlp."
            chunk = D[:, j, h * c:(h + 1) * c]
            out = _bn_eval(_qgelu(chunk @ s[p + "0.weight"].t() + s[p + "0.bias"]), s, p + "2.")
            moe[:, j * e + h * c: j * e + (h + 1) * c] = out * gate[:, h, j:j + 1]
    feat = torch.cat(feats + [moe], 1)
    return feat / feat.norm(dim=1, keepdim=True)
