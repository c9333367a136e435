"""MoSAIC-ReID's attribute-importance study (paper section 4.4, Tables 4, 5 and 7): which attributes matter.

    inclusion, metrics = read_results("results.csv")        # one row per attribute-inclusion configuration
    glm = glm_table(inclusion, metrics["mAP"])                # Gaussian GLM: metric ~ inclusion indicators
    table = importance_table(inclusion, metrics["mAP"])       # RF FIMP / PIMP / mean |SHAP| + t-tests, Cohen's d
    analyse("results.csv", "out/")                            # all of it per metric: CSVs, figures, report.md

The unit of observation is the configuration (which attribute experts were switched on), not the image pair: a
results CSV holds one row per configuration with 0/1 inclusion indicators and metric columns (``mAP``, ``R-1``).
Nothing here knows about configs or models, so any sweep of that shape can be analysed.

Sign convention of the t-tests: ``t`` and Cohen's ``d`` are (included - excluded), so a positive value means
including the attribute raises the metric. The paper's Table 5 prints the opposite sign (excluded first).
"""
from __future__ import annotations

import csv
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy import stats

from .importance_plots import effect_size_figure, importance_figure, shap_summary_figure
from .importance_report import metric_section, metric_stem, report_markdown, write_csv, write_figure, write_text

__all__ = ["ResultsFormatError", "GLMResult", "ForestImportance", "read_results", "glm_table", "forest_importance",
           "t_tests", "importance_table", "analyse", "DEFAULT_METRICS", "GLM_COLUMNS", "IMPORTANCE_COLUMNS"]

logger = logging.getLogger("fastreid." + __name__)

DEFAULT_METRICS = ("mAP", "R-1")
GLM_COLUMNS = ("attribute", "coef", "std_err", "z", "p", "ci_low", "ci_high")
IMPORTANCE_COLUMNS = ("attribute", "fimp", "pimp", "mean_abs_shap", "t", "p", "cohens_d")
INTERCEPT = "Intercept"
# spellings of an inclusion indicator in a CSV cell (compared lower-cased and stripped)
_ONE, _ZERO = {"1", "1.0", "true"}, {"0", "0.0", "false"}

PathLike = Union[str, "os.PathLike[str]"]
Metric = Union[pd.Series, np.ndarray, Sequence[float]]


class ResultsFormatError(ValueError):
    """A results CSV does not have the promised shape; the message names the file, column, row and value."""


# ----------------------------------------------------------------------------------------------------- reading
def _indicator_mask(values: pd.Series) -> np.ndarray:
    """Which cells of a string column spell 0/1 (``0``/``1``, ``0.0``/``1.0``, ``True``/``False``)."""
    v = values.str.strip().str.lower()
    return (v.isin(_ONE) | v.isin(_ZERO)).to_numpy()


def _first_bad(path: PathLike, column: str, values: pd.Series, ok: np.ndarray, expected: str) -> ResultsFormatError:
    i = int(np.flatnonzero(~ok)[0])
    return ResultsFormatError(f"{path}: column {column!r}, data row {i + 1} (line {i + 2}): {values.iloc[i]!r} is "
                              f"not {expected}")


def read_results(path: PathLike, metrics: Optional[Sequence[str]] = None, *,
                 attributes: Optional[Sequence[str]] = None) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Read a results CSV into (inclusion: int 0/1 per attribute, metrics: float per metric), one row per config.

    Metric columns are ``metrics`` (default: those of ``mAP``, ``R-1`` present). Attribute columns are
    ``attributes`` when given, else every other column whose cells are all 0/1 (``0``/``1``, ``0.0``/``1.0``,
    ``True``/``False``). Other columns (a configuration name, a mode) are ignored; their names are logged and
    kept in ``inclusion.attrs["ignored_columns"]``. A column that is mostly 0/1 but not entirely is taken for an
    attribute with a bad cell and is an error, not silently ignored. Raises ``FileNotFoundError`` or
    ``ResultsFormatError`` naming the file, column and row at fault.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"results file {path} does not exist (or is not a file)")
    # the raw header: pandas would silently rename a duplicated column to "name.1"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except UnicodeDecodeError as err:
        raise ResultsFormatError(f"{path} is not a UTF-8 text CSV ({err})") from None
    if not any(h.strip() for h in header):
        raise ResultsFormatError(f"{path} is empty: expected a header line with attribute and metric columns")
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ResultsFormatError(f"{path}: duplicated column names {dupes}")
    # strings first: decide each column's role from its cells, not from pandas' type guess
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.ParserError as err:  # e.g. a row with more fields than the header
        raise ResultsFormatError(f"{path} is not a well-formed CSV: {err}") from None
    frame.columns = header
    found = list(frame.columns)
    if len(frame) < 2:
        raise ResultsFormatError(f"{path} has {len(frame)} configuration row(s); the study needs at least 2 "
                                 f"(one row per attribute-inclusion configuration)")

    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in found]
        if not metrics:
            raise ResultsFormatError(f"{path}: none of the default metric columns {list(DEFAULT_METRICS)} is present "
                                     f"(columns found: {found}); name them with metrics=[...] / --metrics")
    metrics = list(dict.fromkeys(metrics))
    missing = [m for m in metrics if m not in found]
    if missing:
        raise ResultsFormatError(f"{path}: metric column(s) {missing} not found (columns found: {found})")
    scores = {}
    for m in metrics:
        values = pd.to_numeric(frame[m].str.strip(), errors="coerce")
        ok = np.isfinite(values.to_numpy(dtype=np.float64))
        if not ok.all():
            raise _first_bad(path, m, frame[m], ok, "a finite number (metric column)")
        scores[m] = values.astype(np.float64)

    if attributes is not None:
        attributes = list(dict.fromkeys(attributes))
        missing = [a for a in attributes if a not in found]
        if missing:
            raise ResultsFormatError(f"{path}: attribute column(s) {missing} not found (columns found: {found})")
        clash = [a for a in attributes if a in metrics]
        if clash:
            raise ResultsFormatError(f"{path}: column(s) {clash} requested both as metric and as attribute")
    candidates = attributes if attributes is not None else [c for c in found if c not in metrics]
    inclusion, ignored = {}, []
    for c in candidates:
        ok = _indicator_mask(frame[c])
        # explicit attributes must be clean; a guessed column that is mostly 0/1 is an attribute with a typo
        if ok.all():
            inclusion[c] = frame[c].str.strip().str.lower().isin(_ONE).astype(np.int64)
        elif attributes is not None or ok.mean() >= 0.5:
            err = _first_bad(path, c, frame[c], ok, "an inclusion indicator (0/1 or True/False)")
            if attributes is None:  # the guess may be wrong (e.g. a Rank-10 column of mostly 1.0): say how to fix it
                err = ResultsFormatError(f"{err} ({ok.sum()} of {len(ok)} cells are 0/1, so the column was taken "
                                         "for an attribute; name the attribute columns with attributes= / "
                                         "--attributes to leave it out)")
            raise err
        else:
            ignored.append(c)
    if attributes is not None:
        ignored = [c for c in found if c not in metrics and c not in attributes]
    if not inclusion:
        raise ResultsFormatError(f"{path}: no attribute column (all cells 0/1) found besides the metrics {metrics} "
                                 f"(columns found: {found})")
    if ignored:
        logger.info("%s: ignoring non-indicator column(s) %s", path, ignored)
    inclusion = pd.DataFrame(inclusion)
    inclusion.attrs["ignored_columns"] = ignored
    return inclusion, pd.DataFrame(scores)


def _design(inclusion: pd.DataFrame, y: Metric) -> Tuple[np.ndarray, np.ndarray]:
    """(X float (n, k), y float (n,)) after checking shapes and values; rows are matched by position."""
    if not isinstance(inclusion, pd.DataFrame) or inclusion.shape[1] == 0:
        raise ValueError("inclusion must be a DataFrame with one 0/1 column per attribute")
    x = inclusion.to_numpy(dtype=np.float64)
    bad = [c for c, col in zip(inclusion.columns, x.T) if not np.isin(col, (0.0, 1.0)).all()]
    if bad:
        raise ValueError(f"inclusion column(s) {bad} hold values other than 0/1")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{len(y)} metric values for {len(x)} configurations")
    if not np.isfinite(y).all():
        raise ValueError(f"metric holds non-finite values at rows {np.flatnonzero(~np.isfinite(y)).tolist()}")
    return x, y


# -------------------------------------------------------------------------------------------------------- GLM
@dataclass
class GLMResult:
    """``table`` (``GLM_COLUMNS``; Intercept first, then every attribute in input order, NaN for dropped ones),
    ``dropped`` (attribute -> why it left the fit), ``df_resid`` (residual degrees of freedom; 0 -> NaN errors),
    ``note`` (why the whole fit has no error estimates, empty when it has them)."""
    table: pd.DataFrame
    dropped: Dict[str, str] = field(default_factory=dict)
    df_resid: int = 0
    note: str = ""


def _combination(target: str, coefs: np.ndarray, names: List[str]) -> str:
    """``target = c0 + c1*a + ...`` from least-squares coefficients, near-zero terms left out."""
    text = ""
    for c, n in zip(coefs, names):
        if abs(c) > 1e-9:
            term = f"{abs(c):.6g}" if n == INTERCEPT else f"{abs(c):.6g}*{n}"
            text += (f"-{term}" if c < 0 else term) if not text else (f" - {term}" if c < 0 else f" + {term}")
    return f"{target} = {text or '0'}"


def _full_rank_columns(x: np.ndarray, names: List[str]) -> Tuple[List[int], Dict[str, str]]:
    """Indices of the columns kept in the fit and why the others go: constant, or aliased with earlier columns.

    Deterministic: columns are added in input order and one is kept only if it raises the rank of
    [1, kept...]; so of two always-toggled-together attributes the first is kept.
    """
    kept, dropped = [], {}
    base = np.ones((len(x), 1))
    for j, name in enumerate(names):
        col = x[:, j]
        if (col == col[0]).all():
            dropped[name] = ("always included (constant 1)" if col[0] == 1 else "never included (constant 0)") + \
                "; its effect is absorbed by the intercept"
            continue
        trial = np.column_stack([base, col])
        if np.linalg.matrix_rank(trial) > np.linalg.matrix_rank(base):
            base = trial
            kept.append(j)
            continue
        coefs = np.linalg.lstsq(base, col, rcond=None)[0]
        dropped[name] = "exact linear combination of other columns: " + \
            _combination(name, coefs, [INTERCEPT] + [names[k] for k in kept])
    return kept, dropped


def glm_table(inclusion: pd.DataFrame, y: Metric) -> GLMResult:
    """Gaussian GLM (identity link) of the metric on the inclusion indicators, as in the paper's Tables 4 and 7.

    ``statsmodels`` ``GLM(y, add_constant(X), Gaussian()).fit()``: coefficient, standard error, z (Wald, normal
    reference, like the paper's ``P>|z|``), p and the 95% interval ``conf_int(0.05)``. Constant and aliased
    attributes are dropped from the fit (their rows are NaN, the reason is in ``dropped``) instead of letting a
    singular design produce meaningless numbers. With as many parameters as configurations (``df_resid == 0``)
    the fit is exact and has no error estimate: coefficients are reported, std err / z / p / CI are NaN; the
    same for a metric that is constant over all configurations. Both are explained in ``note``.
    """
    import statsmodels.api as sm  # here, not at import: only this analysis needs statsmodels

    x, y = _design(inclusion, y)
    names = [str(c) for c in inclusion.columns]
    if INTERCEPT in names:
        raise ValueError(f"an attribute may not be named {INTERCEPT!r} (the GLM's constant term)")
    kept, dropped = _full_rank_columns(x, names)
    design = sm.add_constant(pd.DataFrame(x[:, kept], columns=[names[j] for j in kept]), prepend=True,
                             has_constant="add")
    df_resid = len(y) - design.shape[1]
    rows = pd.DataFrame(np.nan, index=[INTERCEPT] + names, columns=list(GLM_COLUMNS[1:]))
    fitted = [INTERCEPT] + [names[j] for j in kept]
    note = ""
    if np.ptp(y) == 0:
        # statsmodels' IRLS cannot start on zero deviance (it stops on NaN); the least-squares answer is known
        rows.loc[fitted, "coef"] = [y[0]] + [0.0] * len(kept)
        note = (f"the metric is {y[0]:g} in every configuration, so no attribute changes it; standard errors, z, "
                "p and CIs are undefined (NaN)")
    else:
        with warnings.catch_warnings():
            if df_resid == 0:
                # an exact fit: statsmodels divides by zero degrees of freedom; we report NaN errors ourselves
                warnings.simplefilter("ignore")
            fit = sm.GLM(y, design, family=sm.families.Gaussian()).fit()
        rows.loc[fitted, "coef"] = fit.params.to_numpy()
        if df_resid > 0:
            ci = fit.conf_int(0.05).to_numpy()
            block = np.column_stack([fit.bse.to_numpy(), fit.tvalues.to_numpy(), fit.pvalues.to_numpy(), ci])
            rows.loc[fitted, ["std_err", "z", "p", "ci_low", "ci_high"]] = block
        else:
            note = (f"{design.shape[1]} parameters for {len(y)} configurations leave no residual degrees of freedom: "
                    "the fit is exact; standard errors, z, p and CIs are undefined (NaN)")
    if note:
        logger.warning("GLM: %s", note)
    for name, why in dropped.items():
        logger.info("GLM: attribute %r dropped (%s)", name, why)
    table = rows.reset_index(names="attribute")
    return GLMResult(table=table[list(GLM_COLUMNS)], dropped=dropped, df_resid=int(df_resid), note=note)


# -------------------------------------------------------------------------------- random forest, SHAP, t-tests
@dataclass
class ForestImportance:
    """Random-forest importances, one entry per attribute in input order: impurity importance ``fimp``, mean
    permutation importance ``pimp`` (and its std over repeats), the SHAP matrix (configs x attributes) and the
    SHAP base value (the forest's mean prediction)."""
    attributes: List[str]
    fimp: np.ndarray
    pimp: np.ndarray
    pimp_std: np.ndarray
    shap_values: np.ndarray
    shap_base: float


def forest_importance(inclusion: pd.DataFrame, y: Metric, *, seed: int = 0, n_estimators: int = 500,
                      n_repeats: int = 30) -> ForestImportance:
    """Fit ``RandomForestRegressor(n_estimators, random_state=seed)`` on all configurations and explain it.

    PIMP is ``permutation_importance`` (R^2 drop, ``n_repeats`` shuffles, ``random_state=seed``) on the same
    configurations the forest was fit on: with one observation per configuration there is no held-out set, so it
    measures how much the forest relies on an attribute, not how well that generalises. SHAP values come from
    ``shap.TreeExplainer`` on the same forest (exact for trees). Deterministic for a fixed seed.
    """
    # here, not at import: these libraries take seconds to import and only this analysis needs them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # shap's colormap setup, nothing of ours
        import shap
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    x, y = _design(inclusion, y)
    rf = RandomForestRegressor(n_estimators=n_estimators, random_state=seed).fit(x, y)
    perm = permutation_importance(rf, x, y, n_repeats=n_repeats, random_state=seed)
    explainer = shap.TreeExplainer(rf)
    values = np.asarray(explainer.shap_values(x), dtype=np.float64).reshape(x.shape)
    return ForestImportance(attributes=[str(c) for c in inclusion.columns], fimp=rf.feature_importances_,
                            pimp=perm.importances_mean, pimp_std=perm.importances_std, shap_values=values,
                            shap_base=float(np.ravel(explainer.expected_value)[0]))


def t_tests(inclusion: pd.DataFrame, y: Metric) -> pd.DataFrame:
    """Student two-sample t-test (equal variances) and Cohen's d of the metric, included vs excluded.

    Columns ``attribute, t, p, cohens_d, n_in, n_out``; ``t`` and ``d`` > 0 when inclusion raises the metric;
    d = (mean_in - mean_out) / pooled sd (ddof 1). Constant attributes (one group empty) get NaN. When both
    groups have zero spread, t and d are +-inf if the means differ (perfect separation), NaN if they do not.
    """
    x, y = _design(inclusion, y)
    rows = []
    for name, col in zip(inclusion.columns, x.T):
        inc, exc = y[col == 1], y[col == 0]
        t = p = d = np.nan
        if len(inc) and len(exc) and len(y) > 2:
            with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: inf/NaN is the answer, see above
                res = stats.ttest_ind(inc, exc, equal_var=True)
                t, p = float(res.statistic), float(res.pvalue)
                pooled = ((len(inc) - 1) * _var(inc) + (len(exc) - 1) * _var(exc)) / (len(y) - 2)
                d = float(np.float64(inc.mean() - exc.mean()) / np.sqrt(pooled))
        rows.append((str(name), t, p, d, len(inc), len(exc)))
    return pd.DataFrame(rows, columns=["attribute", "t", "p", "cohens_d", "n_in", "n_out"])


def _var(v: np.ndarray) -> float:
    # a group of one has no spread of its own; it contributes (n - 1) * var = 0 to the pooled variance
    return float(v.var(ddof=1)) if len(v) > 1 else 0.0


def _importance_frame(forest: ForestImportance, tests: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame({"attribute": forest.attributes, "fimp": forest.fimp, "pimp": forest.pimp,
                          "mean_abs_shap": np.abs(forest.shap_values).mean(axis=0)})
    return frame.merge(tests[["attribute", "t", "p", "cohens_d"]], on="attribute", how="left", validate="1:1")


def importance_table(inclusion: pd.DataFrame, y: Metric, *, seed: int = 0, n_estimators: int = 500,
                     n_repeats: int = 30) -> pd.DataFrame:
    """One row per attribute (input order), columns ``IMPORTANCE_COLUMNS``: ``forest_importance`` (FIMP, PIMP,
    mean |SHAP|) next to ``t_tests`` (t, p, Cohen's d), like the paper's Table 5 (with t's sign flipped)."""
    forest = forest_importance(inclusion, y, seed=seed, n_estimators=n_estimators, n_repeats=n_repeats)
    return _importance_frame(forest, t_tests(inclusion, y))


# ---------------------------------------------------------------------------------------------------- analyse
def analyse(results_csv: PathLike, out_dir: PathLike, *, metrics: Optional[Sequence[str]] = None,
            attributes: Optional[Sequence[str]] = None, seed: int = 0, n_estimators: int = 500,
            n_repeats: int = 30) -> Dict[str, Any]:
    """The whole study of a results CSV (``read_results``), per metric column M into ``out_dir``:
    ``glm_M.csv``, ``importance_M.csv``, ``shap_M.png``, ``importance_M.png``, ``effect_sizes_M.png``; then
    ``report.md`` (all tables in Markdown, dropped attributes, number of configurations).

    Returns ``{"configurations": n, "attributes": [...], "ignored_columns": [...], "glm": {M: GLMResult},
    "importance": {M: DataFrame}, "files": [Path, ...], "report": Path, "markdown": str}``.
    """
    if n_estimators < 1 or n_repeats < 1:
        raise ValueError(f"n_estimators and n_repeats must be >= 1, got {n_estimators} and {n_repeats}")
    inclusion, scores = read_results(results_csv, metrics, attributes=attributes)
    stems = {m: metric_stem(m) for m in scores.columns}
    if len(set(stems.values())) < len(stems):
        raise ValueError(f"metrics {list(stems)} map to clashing file names {list(stems.values())}; rename them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    glms, tables, files, sections = {}, {}, [], {}
    for m in scores.columns:
        logger.info("attribute importance: analysing %s (%d configurations, %d attributes)", m, len(inclusion),
                    inclusion.shape[1])
        y = scores[m].to_numpy()
        glms[m] = glm_table(inclusion, y)
        forest = forest_importance(inclusion, y, seed=seed, n_estimators=n_estimators, n_repeats=n_repeats)
        tables[m] = _importance_frame(forest, t_tests(inclusion, y))
        s = stems[m]
        written = [
            write_csv(glms[m].table, out / f"glm_{s}.csv"),
            write_csv(tables[m], out / f"importance_{s}.csv"),
            write_figure(shap_summary_figure(forest.shap_values, inclusion, title=f"SHAP summary: {m}"),
                         out / f"shap_{s}.png"),
            write_figure(importance_figure(tables[m], title=f"Attribute importance: {m}"),
                         out / f"importance_{s}.png"),
            write_figure(effect_size_figure(tables[m], title=f"Effect sizes (included vs excluded): {m}"),
                         out / f"effect_sizes_{s}.png"),
        ]
        files += written
        sections[m] = metric_section(m, glms[m], tables[m], written)
    markdown = report_markdown(source=str(results_csv), inclusion=inclusion, sections=sections, seed=seed,
                               n_estimators=n_estimators, n_repeats=n_repeats)
    report = write_text(markdown, out / "report.md")
    return {"configurations": len(inclusion), "attributes": list(inclusion.columns),
            "ignored_columns": list(inclusion.attrs.get("ignored_columns", [])), "glm": glms,
            "importance": tables, "files": files + [report], "report": report, "markdown": markdown}
