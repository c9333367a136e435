"""Ranked-results figure (PNG, matplotlib): one row per query, the query then its top-k gallery thumbnails.

Frames are green (same identity) / red (another identity) when both ids are known (>= 0), grey otherwise; the
score is printed under each thumbnail; a text query is drawn as its wrapped sentence; each row's title carries the
query's name and, when given, its AP.
"""
from __future__ import annotations

import textwrap
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .search import Ranking

__all__ = ["ranking_figure", "MATCH_COLOUR", "MISMATCH_COLOUR", "UNKNOWN_COLOUR"]

MATCH_COLOUR, MISMATCH_COLOUR, UNKNOWN_COLOUR = "#1a9641", "#d7191c", "#7f7f7f"


def _thumb(path: str, height: int, width: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR))


def _frame(ax, colour: str, width: float = 4.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def ranking_figure(out_png: str, ranking: Ranking, gallery_paths: Sequence[str], *,
                   query_paths: Optional[Sequence[str]] = None, query_texts: Optional[Sequence[str]] = None,
                   query_pids: Optional[Sequence[int]] = None, gallery_pids: Optional[Sequence[int]] = None,
                   titles: Optional[Sequence[str]] = None, thumb_size=(128, 64)) -> str:
    """Write the figure of ``ranking`` (Q rows, k columns + the query) to ``out_png``; returns the path.

    Args:
        query_paths / query_texts: one of them, Q entries (image queries / sentences).
        query_pids, gallery_pids: identities (-1 unknown) for the green/red frames; ``None``: grey frames.
        titles: Q row titles (e.g. "query 3  AP 41.2%"); default: the query's file name or "text query i".
        thumb_size: (height, width) of each thumbnail in pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nq, k = ranking.indices.shape
    if (query_paths is None) == (query_texts is None):
        raise ValueError("give exactly one of query_paths and query_texts")
    queries = list(query_paths if query_paths is not None else query_texts)
    if len(queries) != nq:
        raise ValueError(f"{len(queries)} queries for a ranking of {nq} rows")
    h, w = thumb_size
    inch = 1.0 / 48  # 48 px per inch of figure
    font = max(7.0, h / 16)  # points: readable under thumbnails of any size
    fig, axes = plt.subplots(nq, k + 1, figsize=((k + 1) * (w + 16) * inch, nq * (h + 5 * font) * inch),
                             squeeze=False)
    scores = ranking.scores
    for i in range(nq):
        ax = axes[i, 0]
        if query_paths is not None:
            ax.imshow(_thumb(queries[i], h, w))
        else:
            ax.set_facecolor("#f4f4f4")
            ax.text(0.5, 0.5, "\n".join(textwrap.wrap(queries[i], 18)[:8]), ha="center", va="center",
                    fontsize=font * 0.8, transform=ax.transAxes)
        _frame(ax, "#000000", 2.0)
        title = titles[i] if titles is not None else (queries[i].split("/")[-1] if query_paths is not None
                                                      else f"text query {i}")
        ax.set_title(title, fontsize=font, loc="left")
        qpid = int(query_pids[i]) if query_pids is not None else -1
        for j in range(k):
            ax = axes[i, j + 1]
            g = int(ranking.indices[i, j])
            if g < 0:
                ax.axis("off")
                continue
            ax.imshow(_thumb(gallery_paths[g], h, w))
            gpid = int(gallery_pids[g]) if gallery_pids is not None else -1
            colour = UNKNOWN_COLOUR if qpid < 0 or gpid < 0 else (MATCH_COLOUR if gpid == qpid else MISMATCH_COLOUR)
            _frame(ax, colour)
            ax.set_xlabel(f"{scores[i, j]:.3f}", fontsize=font, labelpad=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=96)
    plt.close(fig)
    return out_png
