"""Heatmaps of the SAGE analyses (``analysis.py``): gate means, gate correlation, expert-vs-merged CKA.

Figures are built on ``matplotlib.figure.Figure`` (Agg canvas) without pyplot, so nothing needs a display and
no global backend state changes. Every cell is annotated with its value; PNGs are saved at 120 dpi.
"""
from pathlib import Path
from typing import List, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .analysis_tables import MODULE_TYPES, Table, TypeLayerTables, block_index, module_type

DPI = 120


def heatmap(ax: Axes, values: np.ndarray, *, rows: Sequence[str], cols: Sequence[str], vmin: float, vmax: float,
            cmap: str, title: str, xlabel: str, ylabel: str, fmt: str = "{:.2f}") -> None:
    """Annotated heatmap of ``values`` (len(rows), len(cols)) on ``ax``, with a colour bar."""
    values = np.asarray(values, dtype=np.float64)
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            r, g, b, _ = im.cmap(im.norm(v)) if np.isfinite(v) else (1.0, 1.0, 1.0, 1.0)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # light text on dark cells
            ax.text(j, i, fmt.format(v) if np.isfinite(v) else "nan", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _figure(width: float, height: float, ncols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def plot_by_type(table: Table, path: Path, *, title: str, vmin: float = 0.0, vmax: float = 1.0,
                 cmap: str = "viridis") -> Path:
    """Module type x expert heatmap of a ``TypeLayerTables.by_type`` table."""
    fig, (ax,) = _figure(1.6 + 1.1 * len(table.cols), 1.2 + 0.5 * len(table.rows))
    heatmap(ax, table.values, rows=table.rows, cols=table.cols, vmin=vmin, vmax=vmax, cmap=cmap, title=title,
            xlabel="source expert", ylabel="module type")
    return _save(fig, Path(path))


def plot_per_layer(table: Table, path: Path, *, title: str, vmin: float = 0.0, vmax: float = 1.0,
                   cmap: str = "viridis") -> Path:
    """One block x expert heatmap per module type (a ``TypeLayerTables.per_layer`` table)."""
    types = [module_type(n) for n in table.rows]
    present = [t for t in MODULE_TYPES if t in types]
    num_blocks = len({block_index(n) for n in table.rows})
    fig, axes = _figure(0.3 + len(present) * (1.6 + 0.9 * len(table.cols)), 1.5 + 0.35 * num_blocks, len(present))
    for ax, t in zip(axes, present):
        idx = [i for i, x in enumerate(types) if x == t]
        heatmap(ax, table.values[idx], rows=[str(block_index(table.rows[i])) for i in idx], cols=table.cols,
                vmin=vmin, vmax=vmax, cmap=cmap, title=t, xlabel="source expert", ylabel="block")
    fig.suptitle(title)
    return _save(fig, Path(path))


def plot_correlation(correlation: Mapping[str, np.ndarray], expert_names: Sequence[str], path: Path, *,
                     title: str = "Pearson correlation of gate weights") -> Path:
    """One K x K correlation heatmap per module type, diverging colours on [-1, 1]."""
    k = len(expert_names)
    fig, axes = _figure(0.3 + len(correlation) * (1.8 + 0.8 * k), 1.6 + 0.6 * k, len(correlation))
    for ax, (t, m) in zip(axes, correlation.items()):
        heatmap(ax, m, rows=expert_names, cols=expert_names, vmin=-1.0, vmax=1.0, cmap="RdBu_r", title=t,
                xlabel="source expert", ylabel="source expert")
    fig.suptitle(title)
    return _save(fig, Path(path))


def plot_analysis(output_dir: Path, *, gate: TypeLayerTables, correlation: Mapping[str, np.ndarray],
                  cka: TypeLayerTables, expert_names: Sequence[str]) -> List[Path]:
    """All five heatmaps of ``run_analysis`` into ``output_dir``; returns the written paths."""
    out = Path(output_dir)
    return [
        plot_by_type(gate.by_type, out / "gate_mean.png", title="Mean gate weight"),
        plot_per_layer(gate.per_layer, out / "gate_mean_per_layer.png", title="Mean gate weight per layer"),
        plot_correlation(correlation, expert_names, out / "gate_correlation.png"),
        plot_by_type(cka.by_type, out / "cka.png", title="Linear CKA: expert vs merged", cmap="magma"),
        plot_per_layer(cka.per_layer, out / "cka_per_layer.png", title="Linear CKA per layer: expert vs merged",
                       cmap="magma"),
    ]
