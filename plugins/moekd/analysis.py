"""Gate analysis (the paper's Sec. 4.1 / 4.3 "mean weight per expert per domain"): the trained MoE teacher in
eval mode (tau_test) over the query + gallery images of each test domain; per domain the mean soft gate weight
g_i (Eq. 8) and the share of images routed to each expert by top-1 (Eq. 9). Written as
``gate_weights.{json,csv,md}`` and a bar chart ``gate_weights.png``."""
from __future__ import annotations

import csv
import json
import logging
import os
from typing import Dict, List, Sequence

import torch
from fastreid.utils import comm
from tabulate import tabulate

from ..engine.eval_only import load_eval_weights
from ..engine.loaders import dataset_items, make_test_loader
from .meta_arch import MoEKDTeacher

__all__ = ["gate_statistics", "gate_weights_report", "plot_gate_weights"]

logger = logging.getLogger("fastreid." + __name__)


@torch.no_grad()
def gate_statistics(model: MoEKDTeacher, loader) -> Dict[str, float]:
    """Mean soft gate weight and top-1 share per expert over a loader's images (model in eval mode)."""
    model.eval()
    names = model.mixture.names
    probs, choices = [], []
    for batch in loader:
        gate = model.encode(batch).gate
        probs.append(gate.probs.float().cpu())
        choices.append(gate.choice.cpu())
    p, c = torch.cat(probs), torch.cat(choices)
    stats = {"images": int(p.shape[0])}
    for k, n in enumerate(names):
        stats[f"mean_weight_{n}"] = float(p[:, k].mean())
        stats[f"top1_share_{n}"] = float((c == k).float().mean())
    return stats


def plot_gate_weights(table: Dict[str, Dict[str, float]], names: Sequence[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(table)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(domains), 3.2))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(domains))]
        vals = [table[d][f"mean_weight_{n}"] for d in domains]
        bars = ax.bar(xs, vals, width, label=f"{n.upper()} (mean g, tau_test)")
        for b, d in zip(bars, domains):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01,
                    f"{b.get_height():.2f}\n({table[d][f'top1_share_{n}']:.0%} top-1)", ha="center", fontsize=7)
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels(domains)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("mean gate weight")
    ax.set_title("MoE-KD gate: mean weight per expert per domain")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gate_weights_report(cfg, weights: str, domains: List[str], out_dir: str) -> Dict[str, Dict[str, float]]:
    """Load the trained teacher (``weights``) of ``cfg`` and write the per-domain gate table and plot."""
    from .trainers import attach_expert_cache, view_transform

    if comm.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
    model = MoEKDTeacher(cfg)
    load_eval_weights(model, weights)
    model.to(torch.device(cfg.MODEL.DEVICE))
    table = {}
    for name in domains:
        c = cfg.clone()
        c.defrost()
        c.DATASETS.TESTS = (name,)
        c.freeze()
        attach_expert_cache(c, model, splits=("query", "gallery"))
        query, gallery = dataset_items([name], "query"), dataset_items([name], "gallery")
        loader, _ = make_test_loader(c, query, gallery, transform=view_transform(c, is_train=False))
        table[name] = gate_statistics(model, loader)
    names = model.mixture.names
    if comm.is_main_process():
        with open(os.path.join(out_dir, "gate_weights.json"), "w") as f:
            json.dump(table, f, indent=2)
        cols = ["images"] + [f"mean_weight_{n}" for n in names] + [f"top1_share_{n}" for n in names]
        with open(os.path.join(out_dir, "gate_weights.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["domain", *cols])
            for d, s in table.items():
                w.writerow([d] + [s[k] for k in cols])
        md = tabulate([[d] + [f"{s[k]:.3f}" if k != "images" else s[k] for k in cols] for d, s in table.items()],
                      headers=["domain", *cols], tablefmt="github")
        with open(os.path.join(out_dir, "gate_weights.md"), "w") as f:
            f.write(f"# MoE-KD gate weights per domain (tau_test = {cfg.MOEKD.GATE.TAU_TEST})\n\n{md}\n")
        plot_gate_weights(table, names, os.path.join(out_dir, "gate_weights.png"))
        logger.info(f"gate weights per domain:\n{md}")
    return table
