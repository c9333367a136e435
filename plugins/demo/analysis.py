"""DeMo analyses: per-instance ATMoE weights over the query set (the paper's Fig. 6) and a t-SNE of test features
coloured by identity (Fig. 4). Figures use ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, no display).

- ``collect``: one pass of a trained model over a test loader -> test features (N, D) and gate weights (N, H, n).
- ``write_gate_weights``: CSV (one row per instance: path, pid, camera, weight per head and decoupled feature, and
  the head-averaged weight per feature) + PNG (instances x features heatmap of the head-averaged weights, sorted
  by identity, and the mean weight per feature with its spread).
- ``write_tsne``: scikit-learn's t-SNE of the L2-normalised test features, one colour per identity, PNG.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .hdm import DECOUPLED

__all__ = ["collect", "feature_names", "write_gate_weights", "write_tsne"]

DPI = 120


def feature_names(n: int) -> Tuple[str, ...]:
    """Names of the MoE inputs: HDM's 7 (D_R .. D_RNT), or the 3 modal features without HDM."""
    return tuple(f"D_{k.upper()}" for k, _ in DECOUPLED) if n == len(DECOUPLED) else ("f_R", "f_N", "f_T")[:n]


@torch.no_grad()
def collect(model, loader, limit: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(test features (N, D), gate weights (N, H, n) or None without ATMoE) in loader order (first ``limit``)."""
    model.eval()
    feats, gates = [], []
    for batch in loader:
        out = model.features(batch)
        feats.append(model.test_features(out).float().cpu())
        if out.gate is not None:
            gates.append(out.gate.float().cpu())
        if limit and sum(f.shape[0] for f in feats) >= limit:
            break
    feats = torch.cat(feats)
    gate = torch.cat(gates) if gates else None
    if limit:
        feats, gate = feats[:limit], None if gate is None else gate[:limit]
    return feats, gate


def write_gate_weights(gate: torch.Tensor, items: Sequence[tuple], out_dir: str, title: str = "") -> Dict[str, str]:
    """CSV + PNG of per-instance gate weights ``gate`` (N, H, n) of ``items`` (reader items, same order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_items, heads, n = gate.shape
    names = feature_names(n)
    mean = gate.mean(1).numpy()  # (N, n): averaged over heads
    csv_path = out / "atmoe_weights.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_path", "pid", "camid"] + [f"h{h}_{names[j]}" for h in range(heads) for j in range(n)]
                   + [f"mean_{m}" for m in names])
        for i in range(n_items):
            it = items[i]
            w.writerow([it[0], it[1], it[2]] + [f"{v:.6f}" for v in gate[i].reshape(-1).tolist()]
                       + [f"{v:.6f}" for v in mean[i]])
    order = np.argsort(np.asarray([int(it[1]) for it in items[:n_items]]), kind="stable")
    fig = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    im = ax1.imshow(mean[order], aspect="auto", cmap="viridis", vmin=0, vmax=max(float(mean.max()), 1e-6),
                    interpolation="nearest")
    ax1.set_xticks(range(n), labels=list(names))
    ax1.set_ylabel("query instance (sorted by identity)")
    ax1.set_title("ATMoE weight per instance (mean over heads)")
    fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.04)
    ax2.bar(range(n), mean.mean(0), yerr=mean.std(0), capsize=3, color="tab:blue")
    ax2.axhline(1.0 / n, color="grey", linestyle="--", linewidth=1, label="uniform")
    ax2.set_xticks(range(n), labels=list(names), rotation=30)
    ax2.set_title("mean weight (bars: std)")
    ax2.legend()
    if title:
        fig.suptitle(title)
    png_path = out / "atmoe_weights.png"
    fig.savefig(png_path, dpi=DPI)
    return {"csv": str(csv_path), "png": str(png_path)}


def write_tsne(feats: torch.Tensor, pids: Sequence[int], out_path: str, *, title: str = "", seed: int = 0,
               max_ids: int = 0) -> str:
    """t-SNE (2-D) of ``feats`` (N, D), coloured by identity; ``max_ids`` > 0 keeps the first that many ids."""
    from sklearn.manifold import TSNE

    pids = np.asarray([int(p) for p in pids])
    if max_ids:
        keep = np.isin(pids, np.unique(pids)[:max_ids])
        feats, pids = feats[torch.from_numpy(keep)], pids[keep]
    if feats.shape[0] < 5:
        raise ValueError(f"t-SNE needs at least 5 features, got {feats.shape[0]}")
    x = torch.nn.functional.normalize(feats.float(), dim=1).numpy()
    emb = TSNE(n_components=2, perplexity=min(30.0, (x.shape[0] - 1) / 3), init="pca",
               random_state=seed).fit_transform(x)
    fig = Figure(figsize=(6, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ids = np.unique(pids)
    palette = matplotlib.colormaps["tab20"].resampled(max(len(ids), 1))
    for k, pid in enumerate(ids):
        sel = pids == pid
        ax.scatter(emb[sel, 0], emb[sel, 1], s=12, color=palette(k % palette.N))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of test features ({len(ids)} identities)")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    return str(out_path)
