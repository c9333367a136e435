"""Routing analysis of a DM-Adapter model: expert usage per block and tower over a dataset, its entropy (routing
balance or collapse), and the learned mixing scalar a of every domain-aware router.

``expert_usage(model, loader)`` runs the model in eval mode over a ``TextImageTestLoader`` (captions, then
images) and counts, per SMA block, how often each expert is among a token's top-k: over every image token (CLS
included) and over every caption token up to its <end> (padding excluded). ``usage_rows`` gives one row per
block: the share of routing assignments per expert (rows sum to 1) and the entropy of that share divided by
log(K) (1 = every expert equally used; top-k routing onto always the same k experts gives log(k) / log(K)).
``write_usage`` writes ``expert_usage.csv``, ``router_alpha.csv`` and ``expert_usage.png`` (heatmap).
"""
from __future__ import annotations

import csv
import math
import os
from typing import Dict, List

import torch

from .meta_arch import DMAdapter

__all__ = ["expert_usage", "usage_rows", "router_alphas", "write_usage"]


@torch.no_grad()
def expert_usage(model: DMAdapter, loader) -> Dict[str, torch.Tensor]:
    """{"image": (L_img, K) counts, "text": (L_txt, K) counts} of top-k selections per block."""
    model.eval()
    counts = {"image": None, "text": None}
    for batch in loader:
        if "images" in batch:
            model({"images": batch["images"]})
            tower, blocks, valid = "image", model.image_blocks(), None
        else:
            tokens = batch["text_tokens"]
            model({"text_tokens": tokens})
            tower, blocks = "text", model.text_blocks()
            eot = tokens.argmax(dim=-1)
            valid = None if blocks[0].routing is None else (
                torch.arange(blocks[0].routing.weights.shape[1])[None, :] <= eot[:, None].cpu())
        if any(b.routing is None for b in blocks):
            raise ValueError("this model has single adapters (DMADAPTER.NUM_EXPERTS 1): there is no routing")
        rows = []
        for b in blocks:
            selected = (b.routing.weights > 0).float().cpu()  # (B, N, K)
            if valid is not None:
                selected = selected * valid[..., None].float()
            rows.append(selected.sum(dim=(0, 1)))
        add = torch.stack(rows)
        counts[tower] = add if counts[tower] is None else counts[tower] + add
    return {k: v for k, v in counts.items() if v is not None}


def usage_rows(counts: Dict[str, torch.Tensor]) -> List[dict]:
    """One row per (tower, block): share per expert, normalised entropy, tokens counted."""
    rows = []
    for tower, table in counts.items():
        k = table.shape[1]
        for i, c in enumerate(table):
            share = c / c.sum().clamp_min(1)
            ent = float(-(share[share > 0] * share[share > 0].log()).sum()) / math.log(k)
            rows.append({"tower": tower, "block": i, **{f"expert_{j}": float(share[j]) for j in range(k)},
                         "entropy": ent, "assignments": int(c.sum())})
    return rows


def router_alphas(model: DMAdapter) -> List[dict]:
    """The mixing scalar a of every domain-aware router (tower, block, alpha)."""
    out = []
    for tower, blocks in (("image", model.image_blocks()), ("text", model.text_blocks())):
        for i, b in enumerate(blocks):
            alpha = getattr(getattr(b.sma, "router", None), "alpha", None)
            if alpha is not None:
                out.append({"tower": tower, "block": i, "alpha": float(alpha.detach())})
    return out


def _write_csv(path: str, rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_usage(out_dir: str, counts: Dict[str, torch.Tensor], alphas: List[dict], title: str = "") -> Dict[str, str]:
    """expert_usage.csv, router_alpha.csv, expert_usage.png in ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    rows = usage_rows(counts)
    paths = {"usage": os.path.join(out_dir, "expert_usage.csv"), "alpha": os.path.join(out_dir, "router_alpha.csv"),
             "heatmap": os.path.join(out_dir, "expert_usage.png")}
    _write_csv(paths["usage"], rows)
    _write_csv(paths["alpha"], alphas)
    towers = list(counts)
    fig, axes = plt.subplots(1, len(towers), figsize=(4 * len(towers), 0.4 * max(len(c) for c in counts.values()) + 2),
                             squeeze=False)
    for ax, tower in zip(axes[0], towers):
        share = counts[tower] / counts[tower].sum(dim=1, keepdim=True).clamp_min(1)
        im = ax.imshow(share.numpy(), vmin=0, vmax=max(0.5, float(share.max())), cmap="viridis", aspect="auto")
        ax.set_xlabel("expert")
        ax.set_ylabel("block")
        ent = [r["entropy"] for r in rows if r["tower"] == tower]
        ax.set_title(f"{tower} tower (mean entropy {sum(ent) / len(ent):.2f})")
        ax.set_xticks(range(share.shape[1]))
        ax.set_yticks(range(share.shape[0]))
        fig.colorbar(im, ax=ax, label="share of top-k assignments")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(paths["heatmap"], dpi=100)
    plt.close(fig)
    return paths
