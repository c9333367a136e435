"""Figures of the attribute-importance study (``importance.py``): SHAP summary, importance bars, effect sizes.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot, so nothing needs a display and
no global backend state changes; the caller saves them. Nothing random: the SHAP swarm stacks points by bins
instead of jittering them, so reruns draw the same picture.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["significance_stars", "shap_summary_figure", "importance_figure", "effect_size_figure"]

INCLUDED, EXCLUDED = "tab:red", "tab:blue"  # SHAP dots
RAISES, LOWERS = "tab:green", "tab:purple"  # effect-size bars


def significance_stars(p: float) -> str:
    """The paper's markers: ``**`` for p < 0.01, ``*`` for p < 0.05, nothing otherwise (or for NaN)."""
    if p is None or not math.isfinite(p):
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def _figure(width: float, height: float, ncols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False, sharey=True)[0]


def _swarm_offsets(values: np.ndarray, bins: int = 40, width: float = 0.4) -> np.ndarray:
    """Vertical offsets that stack points of similar value (0, +1, -1, +2, ... within a bin), at most +-width."""
    lo, hi = float(values.min()), float(values.max())
    idx = np.zeros(len(values), dtype=int) if hi == lo else \
        np.minimum(((values - lo) / (hi - lo) * bins).astype(int), bins - 1)
    offsets = np.zeros(len(values))
    for b in np.unique(idx):
        members = np.flatnonzero(idx == b)
        members = members[np.argsort(values[members], kind="stable")]
        rank = np.arange(len(members))
        offsets[members] = np.where(rank % 2, (rank + 1) // 2, -(rank // 2))  # 0, 1, -1, 2, -2, ...
    peak = np.abs(offsets).max()
    return offsets * (width / peak) if peak else offsets


def shap_summary_figure(shap_values: np.ndarray, inclusion: pd.DataFrame, *, title: str) -> Figure:
    """SHAP summary (beeswarm): one row per attribute, strongest mean |SHAP| on top; a dot per configuration at
    its SHAP value, red when the attribute was included, blue when excluded."""
    values = np.asarray(shap_values, dtype=np.float64)
    names = [str(c) for c in inclusion.columns]
    order = np.argsort(-np.abs(values).mean(axis=0), kind="stable")
    fig, (ax,) = _figure(7.0, 1.2 + 0.45 * len(names))
    for row, j in enumerate(order[::-1]):  # the first plotted row sits at the bottom
        on = inclusion.iloc[:, j].to_numpy() == 1
        y = row + _swarm_offsets(values[:, j])
        ax.scatter(values[on, j], y[on], s=14, c=INCLUDED, label="included" if row == 0 else None)
        ax.scatter(values[~on, j], y[~on], s=14, c=EXCLUDED, label="excluded" if row == 0 else None)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(range(len(names)), labels=[names[j] for j in order[::-1]])
    ax.set_xlabel("SHAP value (impact on the predicted metric)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def importance_figure(table: pd.DataFrame, *, title: str) -> Figure:
    """FIMP, PIMP and mean |SHAP| bars side by side (``IMPORTANCE_COLUMNS`` table), attributes by FIMP, top first."""
    t = table.sort_values("fimp", ascending=True, kind="stable")
    fig, axes = _figure(10.0, 1.2 + 0.4 * len(t), 3)
    for ax, (col, label) in zip(axes, [("fimp", "RF impurity importance (FIMP)"),
                                       ("pimp", "permutation importance (PIMP, R² drop)"),
                                       ("mean_abs_shap", "mean |SHAP| (metric units)")]):
        ax.barh(range(len(t)), t[col].to_numpy(), color="tab:green")
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(label)
    axes[0].set_yticks(range(len(t)), labels=t["attribute"].tolist())
    fig.suptitle(title)
    return fig


def effect_size_figure(table: pd.DataFrame, *, title: str) -> Figure:
    """Cohen's d per attribute (included - excluded), ``*``/``**`` for t-test p < 0.05 / 0.01; constant
    attributes (no test) are labelled instead of drawn."""
    t = table.iloc[::-1]  # first attribute on top
    d = t["cohens_d"].to_numpy(dtype=np.float64)
    finite = np.isfinite(d)
    fig, (ax,) = _figure(7.0, 1.2 + 0.4 * len(t))
    ax.barh(np.arange(len(t))[finite], d[finite], color=np.where(d[finite] >= 0, RAISES, LOWERS))
    ax.axvline(0.0, color="grey", lw=0.8)
    for i, (value, p) in enumerate(zip(d, t["p"].to_numpy(dtype=np.float64))):
        if np.isfinite(value):
            ax.annotate(significance_stars(p), (value, i), xytext=(3 if value >= 0 else -3, -4),
                        textcoords="offset points", ha="left" if value >= 0 else "right")
        else:
            ax.annotate("n/a (constant)" if np.isnan(value) else "inf (no spread)", (0.0, i), xytext=(3, -4),
                        textcoords="offset points", fontsize=8, color="grey")
    ax.set_yticks(range(len(t)), labels=t["attribute"].tolist())
    ax.set_xlabel("Cohen's d (included - excluded);  * p < 0.05, ** p < 0.01")
    ax.set_title(title)
    return fig
