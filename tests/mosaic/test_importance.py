"""Known-answer tests of MoSAIC-ReID's attribute-importance study (``plugins/mosaic/importance.py``) and of its
CLI ``tools/attribute_importance.py``: planted effects are found, the GLM is statsmodels' fit, hand-computed
t-tests match, rank-deficient designs are reported, outputs are the promised files and are reproducible."""
from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.stats import t as student

from plugins.mosaic.importance import (GLM_COLUMNS, IMPORTANCE_COLUMNS, ResultsFormatError, glm_table,
                                       importance_table, read_results, t_tests)

REPO = Path(__file__).resolve().parents[2]
FAST = dict(seed=0, n_estimators=25, n_repeats=3)  # enough trees to rank a planted effect, and quick


def _load_tool():
    spec = importlib.util.spec_from_file_location("attribute_importance", REPO / "tools" / "attribute_importance.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


tool = _load_tool()


def planted(n: int = 40, k: int = 8, seed: int = 0) -> pd.DataFrame:
    """``n`` configurations over ``k`` attributes (random 0/1 design), a name column, and metrics with planted
    effects: mAP = 80 + 5 a0 + 2 a1 + 0.5 a2 + noise, R-1 = 90 + 3 a0 + 1 a3 + noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(n, k))
    assert (x.min(axis=0) == 0).all() and (x.max(axis=0) == 1).all()  # no constant column by accident
    frame = pd.DataFrame(x, columns=[f"a{j}" for j in range(k)])
    frame.insert(0, "config", [f"cfg{i}" for i in range(n)])
    frame["mAP"] = 80 + 5 * frame.a0 + 2 * frame.a1 + 0.5 * frame.a2 + rng.normal(0, 0.1, n)
    frame["R-1"] = 90 + 3 * frame.a0 + 1 * frame.a3 + rng.normal(0, 0.1, n)
    return frame


@pytest.fixture
def results_csv(tmp_path) -> Path:
    path = tmp_path / "results.csv"
    planted().to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------------------ reading
def test_read_ignores_name_column_and_parses_indicator_spellings(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("config,mode,hat,bag,coat,mAP,R-1\n"
                    "all,eval,1,True,1.0,90.5,95\n"
                    "none,eval,0,false,0.0,88.0,94\n"
                    "hat,eval,1,FALSE,0,89.0,94.5\n")
    inclusion, metrics = read_results(path)
    assert list(inclusion.columns) == ["hat", "bag", "coat"]  # config and mode are not all 0/1: ignored
    assert inclusion.attrs["ignored_columns"] == ["config", "mode"]
    assert inclusion.to_numpy().tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert list(metrics.columns) == ["mAP", "R-1"] and metrics["mAP"].tolist() == [90.5, 88.0, 89.0]
    inclusion, _ = read_results(path, ["mAP"], attributes=["bag"])
    assert list(inclusion.columns) == ["bag"] and set(inclusion.attrs["ignored_columns"]) == {
        "config", "mode", "hat", "coat", "R-1"}


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("a,mAP\n1,90\n", "1 configuration row"),
    ("a,R-5\n1,90\n0,91\n", "none of the default metric columns"),
    ("a,mAP\n1,90\n0,high\n", r"column 'mAP', data row 2 \(line 3\): 'high' is not a finite number"),
    ("name,mAP\nx,90\ny,91\n", "no attribute column"),
    ("a,b,mAP\n1,0,90\n0,2,91\n1,1,92\n", r"column 'b', data row 2 \(line 3\): '2' is not an inclusion indicator"),
    ("a,a,mAP\n1,0,90\n0,1,91\n", "duplicated column names"),
])
def test_read_errors_name_file_column_and_row(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ResultsFormatError, match=match) as err:
        read_results(path)
    assert str(path) in str(err.value)


def test_read_missing_file_and_missing_metric(tmp_path, results_csv):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_results(tmp_path / "nope.csv")
    with pytest.raises(ResultsFormatError, match=r"metric column\(s\) \['R-5'\] not found.*'a0'"):
        read_results(results_csv, ["mAP", "R-5"])
    with pytest.raises(ResultsFormatError, match="column 'config', data row 1"):
        read_results(results_csv, attributes=["a0", "config"])  # explicit attributes must be clean 0/1


# ---------------------------------------------------------------------------------------------------------- GLM
def test_glm_equals_direct_statsmodels_fit(results_csv):
    inclusion, metrics = read_results(results_csv)
    result = glm_table(inclusion, metrics["mAP"])
    ref = sm.GLM(metrics["mAP"].to_numpy(), sm.add_constant(inclusion.astype(float)),
                 family=sm.families.Gaussian()).fit()
    t = result.table
    assert tuple(t.columns) == GLM_COLUMNS
    assert t["attribute"].tolist() == ["Intercept"] + [f"a{j}" for j in range(8)]
    ci = ref.conf_int(0.05).to_numpy()
    for col, want in [("coef", ref.params), ("std_err", ref.bse), ("z", ref.tvalues), ("p", ref.pvalues),
                      ("ci_low", ci[:, 0]), ("ci_high", ci[:, 1])]:
        np.testing.assert_allclose(t[col].to_numpy(), np.asarray(want), rtol=0, atol=1e-10, err_msg=col)
    assert result.dropped == {} and result.df_resid == 40 - 9
    coef = dict(zip(t["attribute"], t["coef"]))  # the planted effects, recovered
    assert coef["Intercept"] == pytest.approx(80, abs=0.2) and coef["a0"] == pytest.approx(5, abs=0.1)
    assert coef["a1"] == pytest.approx(2, abs=0.1) and coef["a2"] == pytest.approx(0.5, abs=0.1)


def test_glm_reports_rank_deficient_designs():
    frame = planted(n=30)
    inclusion = frame[[f"a{j}" for j in range(4)]].copy()
    inclusion.insert(1, "always", 1)
    inclusion["never"] = 0
    inclusion["twin"] = inclusion["a1"]       # always toggled together with a1
    inclusion["not_a2"] = 1 - inclusion["a2"]  # aliased with the intercept and a2
    y = frame["mAP"].to_numpy()
    result = glm_table(inclusion, y)
    t = result.table.set_index("attribute")
    assert list(t.index) == ["Intercept", "a0", "always", "a1", "a2", "a3", "never", "twin", "not_a2"]
    assert set(result.dropped) == {"always", "never", "twin", "not_a2"}
    assert "always included" in result.dropped["always"] and "never included" in result.dropped["never"]
    assert result.dropped["twin"].endswith("twin = 1*a1")
    assert result.dropped["not_a2"].endswith("not_a2 = 1 - 1*a2")
    assert t.loc[list(result.dropped)].isna().all().all()
    # the kept part is the fit of the full-rank design
    kept = ["a0", "a1", "a2", "a3"]
    ref = sm.GLM(y, sm.add_constant(inclusion[kept].astype(float)), family=sm.families.Gaussian()).fit()
    np.testing.assert_allclose(t.loc[["Intercept"] + kept, "coef"], ref.params, rtol=0, atol=1e-10)
    np.testing.assert_allclose(t.loc[["Intercept"] + kept, "std_err"], ref.bse, rtol=0, atol=1e-10)


def test_glm_without_residual_degrees_of_freedom():
    inclusion = pd.DataFrame({"a": [0, 1, 0], "b": [0, 0, 1]})
    result = glm_table(inclusion, [1.0, 3.0, 4.5])  # 3 parameters, 3 configurations: an exact fit
    assert result.df_resid == 0
    np.testing.assert_allclose(result.table["coef"], [1.0, 2.0, 3.5], atol=1e-12)
    assert result.table[["std_err", "z", "p", "ci_low", "ci_high"]].isna().all().all()
    assert "no residual degrees of freedom" in result.note


def test_glm_on_a_constant_metric():
    # statsmodels' IRLS stops on a constant metric; the table says what the fit is instead of crashing
    inclusion = pd.DataFrame({"a": [0, 1, 0, 1], "b": [0, 0, 1, 1]})
    result = glm_table(inclusion, [90.0] * 4)
    assert result.table["coef"].tolist() == [90.0, 0.0, 0.0] and "every configuration" in result.note
    assert result.table["std_err"].isna().all()


# ---------------------------------------------------------------------------------------- forest, SHAP, t-tests
def test_t_test_and_cohens_d_by_hand():
    inclusion = pd.DataFrame({"a": [1, 1, 1, 0, 0], "on": [1, 1, 1, 1, 1]})
    y = [3.0, 5.0, 4.0, 1.0, 2.0]
    # included: mean 4, var 1 (n 3); excluded: mean 1.5, var 0.5 (n 2); pooled var (2*1 + 1*0.5) / 3 = 5/6
    # t = 2.5 / sqrt(5/6 * (1/3 + 1/2)) = 3 exactly, 3 degrees of freedom; d = 2.5 / sqrt(5/6)
    tests = t_tests(inclusion, y).set_index("attribute")
    assert tests.loc["a", "t"] == pytest.approx(3.0, abs=1e-12)
    assert tests.loc["a", "p"] == pytest.approx(2 * student.sf(3.0, df=3), abs=1e-12)
    assert tests.loc["a", "cohens_d"] == pytest.approx(2.5 / math.sqrt(5 / 6), abs=1e-12)
    assert (tests.loc["a", "n_in"], tests.loc["a", "n_out"]) == (3, 2)
    assert tests.loc["on", ["t", "p", "cohens_d"]].isna().all()  # constant: no test, no crash
    flipped = t_tests(1 - inclusion[["a"]], y)  # the sign says whether inclusion raises the metric
    assert flipped.loc[0, "t"] == pytest.approx(-3.0) and flipped.loc[0, "cohens_d"] < 0


def test_importance_ranks_planted_effect_first(results_csv):
    inclusion, metrics = read_results(results_csv)
    table = importance_table(inclusion, metrics["mAP"], **FAST)
    assert tuple(table.columns) == IMPORTANCE_COLUMNS
    assert table["attribute"].tolist() == list(inclusion.columns)
    for col in ["fimp", "pimp", "mean_abs_shap", "t", "cohens_d"]:
        assert table.loc[table[col].idxmax(), "attribute"] == "a0", col
    assert table.set_index("attribute").loc["a0", "p"] < 1e-10
    assert table["fimp"].sum() == pytest.approx(1.0)
    again = importance_table(inclusion, metrics["mAP"], **FAST)
    pd.testing.assert_frame_equal(table, again, check_exact=True)  # same seed, same numbers


def test_importance_with_constant_attribute_does_not_crash():
    frame = planted(n=20)
    inclusion = frame[["a0", "a1"]].assign(always=1)
    table = importance_table(inclusion, frame["mAP"], **FAST).set_index("attribute")
    assert table.loc["always", ["t", "p", "cohens_d"]].isna().all()
    assert table.loc["always", ["fimp", "pimp", "mean_abs_shap"]].tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_promised_files_reproducibly(tmp_path, results_csv, capsys):
    args = ["--results", str(results_csv), "--n-estimators", "25", "--n-repeats", "3"]
    tool.main(args + ["--out", str(tmp_path / "run1")])
    out = capsys.readouterr().out
    assert "| attribute" in out and "Intercept" in out
    assert out.strip().splitlines()[-1] == \
        f"attribute_importance configurations=40 metrics=mAP,R-1 out={tmp_path / 'run1'}"
    expected = {f"{kind}_{m}.{ext}" for m in ("mAP", "R-1") for kind, ext in
                [("glm", "csv"), ("importance", "csv"), ("shap", "png"), ("importance", "png"),
                 ("effect_sizes", "png")]} | {"report.md"}
    assert {p.name for p in (tmp_path / "run1").iterdir()} == expected  # and no temporary file left behind
    for m in ("mAP", "R-1"):
        assert tuple(pd.read_csv(tmp_path / "run1" / f"glm_{m}.csv").columns) == GLM_COLUMNS
        assert tuple(pd.read_csv(tmp_path / "run1" / f"importance_{m}.csv").columns) == IMPORTANCE_COLUMNS
    report = (tmp_path / "run1" / "report.md").read_text()
    assert "configurations (observations): 40" in report and "ignored columns: config" in report

    tool.main(args + ["--out", str(tmp_path / "run2")])
    for name in sorted(n for n in expected if n.endswith(".csv")):
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes(), name


@pytest.mark.parametrize("case, match", [
    ("missing-metric", r"metric column\(s\) \['R-5'\] not found"),
    ("non-binary", r"column 'a0', data row 1 \(line 2\): '3' is not an inclusion indicator"),
    ("missing-file", "does not exist"),
])
def test_cli_clear_errors(tmp_path, results_csv, capsys, case, match):
    path = results_csv
    if case == "non-binary":
        frame = planted()
        frame.loc[0, "a0"] = 3
        frame.to_csv(path, index=False)
    elif case == "missing-file":
        path = tmp_path / "missing.csv"
    extra = ["--metrics", "mAP", "R-5"] if case == "missing-metric" else []
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--results", str(path), "--out", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(path) in err
    assert re.search(match, err), err
