"""Files of the attribute-importance study (``importance.analyse``): atomic writers and the Markdown report.

Every file is written under a temporary name in its own folder and renamed into place (``os.replace``), so a
killed run never leaves a half-written file under a final name. ``report.md`` is written last: its presence means
the run finished.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

import pandas as pd
from matplotlib.figure import Figure
from tabulate import tabulate

from .importance_plots import significance_stars


__all__ = ["metric_stem", "write_atomic", "write_csv", "write_figure", "write_text", "metric_section",
           "report_markdown"]

DPI = 120


def metric_stem(metric: str) -> str:
    """The metric's part of a file name (``glm_<stem>.csv``): the name itself, other characters than letters,
    digits, ``.``, ``_`` and ``-`` replaced by ``_`` (``R-1`` stays ``R-1``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", metric).strip("._") or "metric"


def write_atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # write() failed: leave nothing behind
            tmp.unlink()
    return path


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    # pandas writes floats with repr (round-trip exact), so the same numbers always give the same bytes
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))


def write_figure(fig: Figure, path: Path) -> Path:
    # the temporary name does not end in .png, so the format is named
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def write_text(text: str, path: Path) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomic(path, write)


def _markdown(frame: pd.DataFrame, floatfmt: Sequence[str]) -> str:
    """GitHub table; p-values carry the paper's ``*``/``**``; NaN (dropped, constant) shows as an em dash."""
    rows = []
    for record in frame.itertuples(index=False):
        row = [None if isinstance(v, float) and v != v else v for v in record]  # NaN -> None -> missingval
        if "p" in frame and row[frame.columns.get_loc("p")] is not None:
            p = row[frame.columns.get_loc("p")]
            row[frame.columns.get_loc("p")] = f"{p:.3g}{significance_stars(p)}"
        rows.append(row)
    return tabulate(rows, headers=list(frame.columns), tablefmt="github", floatfmt=tuple(floatfmt), missingval="—")


def metric_section(metric: str, glm: Any, importance: pd.DataFrame, files: Sequence[Path]) -> str:
    """The report's section of one metric (``glm``: an ``importance.GLMResult``): GLM table, dropped attributes,
    importance table, file names."""
    lines = [f"## {metric}", "", f"### GLM (Gaussian, identity link): {metric} ~ inclusion indicators", "",
             _markdown(glm.table, [""] + [".3f"] * 6), ""]
    if glm.dropped:
        lines += ["Dropped from the GLM (rank-deficient design; their rows are empty):", ""]
        lines += [f"- `{name}`: {why}" for name, why in glm.dropped.items()]
        lines += ["", "The forest and the t-tests cannot separate aliased attributes either: read their rows together."]
    else:
        lines.append("Dropped from the GLM: none (full-rank design).")
    lines.append("")
    if glm.note:
        lines += [f"Note: {glm.note}.", ""]
    lines += ["### Random forest (FIMP, PIMP, mean |SHAP|) and t-tests (included vs excluded)", "",
              _markdown(importance, ["", ".3f", ".3f", ".3f", ".3f", ".3g", ".3f"]), "",
              "Figures: " + ", ".join(f"`{Path(f).name}`" for f in files if str(f).endswith(".png")), ""]
    return "\n".join(lines)


def report_markdown(*, source: str, inclusion: pd.DataFrame, sections: Dict[str, str], seed: int,
                    n_estimators: int, n_repeats: int) -> str:
    """The whole ``report.md``: what was analysed, how, and one section per metric."""
    ignored = inclusion.attrs.get("ignored_columns", [])
    counts = inclusion.sum(axis=0).astype(int)
    head = [
        "# Attribute importance (MoSAIC-ReID, section 4.4)", "",
        f"- results: `{source}`",
        f"- configurations (observations): {len(inclusion)}",
        f"- attributes ({inclusion.shape[1]}, times included): "
        + ", ".join(f"{a} ({counts[a]})" for a in inclusion.columns),
        f"- ignored columns: {', '.join(map(str, ignored)) if ignored else 'none'}",
        f"- random forest: {n_estimators} trees, seed {seed}; permutation importance: {n_repeats} repeats "
        "(on the configurations the forest was fit on)",
        "- t-tests: Student (equal variances); t and Cohen's d are included - excluded, so > 0 means including "
        "the attribute raises the metric (the paper's Table 5 prints the opposite sign); * p < 0.05, ** p < 0.01",
        "",
    ]
    return "\n".join(head + [sections[m] for m in sections]) + "\n"
