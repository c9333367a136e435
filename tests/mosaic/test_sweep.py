"""The inclusion sweep: the configuration list, resuming a half-finished sweep, the modes comparison, and the
identity-entropy ground truth."""
import csv
import math

import pytest

from plugins.data.datasets.duke_attribute import DUKE_ATTRIBUTES
from plugins.data.datasets.market_attribute import MARKET_ATTRIBUTES
from plugins.mosaic.evaluation import identity_entropy
from plugins.mosaic.schema import build_schema
from plugins.mosaic.sweep import SweepTable, compare_modes, inclusion_configurations, run_sweep

MARKET = build_schema(MARKET_ATTRIBUTES)


def _metrics(value):
    return {"mAP": value, "Rank-1": value + 1, "Rank-5": value + 2, "Rank-10": value + 3}


def test_configurations_of_the_paper_kinds():
    configs = dict(inclusion_configurations(MARKET))
    assert len(configs) == 1 + 1 + 12 + 5 + 12  # all, none, singles, groups, leave-one-out
    assert configs["all"] == MARKET.names and configs["none"] == ()
    assert configs["group intrinsic"] == ("gender", "hair", "age")
    assert configs["group extrinsic"] == tuple(n for n in MARKET.names if n not in ("gender", "hair", "age"))
    assert configs["without age"] == tuple(n for n in MARKET.names if n != "age")
    duke = dict(inclusion_configurations(build_schema(DUKE_ATTRIBUTES)))
    # Duke's intrinsic group is gender alone, so "group intrinsic" = "only gender" and "without gender" =
    # "group extrinsic": a set is kept once, under its first name
    assert duke["only gender"] == ("gender",) and "group intrinsic" not in duke and "without gender" not in duke
    assert len(duke) == 1 + 1 + 10 + 4 + 9


def test_extra_configurations_and_errors():
    configs = dict(inclusion_configurations(MARKET, ["all"], ["colours=upper_colour+lower_colour"]))
    assert configs == {"all": MARKET.names, "colours": ("upper_colour", "lower_colour")}
    with pytest.raises(ValueError, match="name=attr"):
        inclusion_configurations(MARKET, ["all"], ["colours"])
    with pytest.raises(KeyError, match="unknown study attributes"):
        inclusion_configurations(MARKET, ["all"], ["x=colour"])
    with pytest.raises(ValueError, match="MOSAIC.SWEEP.KINDS"):
        inclusion_configurations(MARKET, ["pairs"])


def test_half_finished_sweep_resumes_where_it_stopped(tmp_path):
    configs = inclusion_configurations(MARKET, ["all", "none", "single"])
    path = str(tmp_path / "sweep" / "results.csv")
    calls = []

    def evaluate(name, members):
        calls.append(name)
        if name == "only up":
            raise KeyboardInterrupt  # the sweep is killed mid-way
        return _metrics(50.0 + len(members))

    with pytest.raises(KeyboardInterrupt):
        run_sweep(SweepTable(path, MARKET.names), configs, evaluate, progress=lambda msg: None)
    done = calls[:-1]
    assert done == ["all", "none", "only gender", "only hair"]
    calls.clear()
    table = run_sweep(SweepTable(path, MARKET.names), configs,
                      lambda n, m: calls.append(n) or _metrics(50.0 + len(m)), progress=lambda msg: None)
    assert calls == [n for n, _ in configs][len(done):]  # nothing evaluated twice
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["configuration"] for r in rows] == [n for n, _ in configs]
    assert rows[0]["gender"] == "1" and rows[1]["gender"] == "0" and float(rows[0]["mAP"]) == 62.0
    assert list(rows[0]) == ["configuration", *MARKET.names, "mAP", "R-1", "R-5", "R-10"]
    assert "only gender" in table.markdown()


def test_a_table_of_another_schema_is_refused(tmp_path):
    path = str(tmp_path / "results.csv")
    SweepTable(path, MARKET.names).add("all", MARKET.names, _metrics(1.0))
    with pytest.raises(ValueError, match="another dataset or attribute schema"):
        SweepTable(path, build_schema(DUKE_ATTRIBUTES).names)


def test_compare_modes(tmp_path):
    test, retrained = SweepTable(str(tmp_path / "a.csv"), MARKET.names), SweepTable(str(tmp_path / "b.csv"), MARKET.names)
    for name, a, b in (("all", 90.0, 92.0), ("none", 50.0, 50.0), ("only age", 60.0, 55.0), ("x", 1.0, None)):
        test.add(name, (), _metrics(a))
        if b is not None:
            retrained.add(name, (), _metrics(b))
    cmp = compare_modes(test, retrained)
    assert cmp["configurations"] == 3
    assert cmp["mean_abs_diff"] == pytest.approx((2 + 0 + 5) / 3) and cmp["max_abs_diff"] == 5.0
    assert cmp["spearman"] == pytest.approx(1.0)


def test_identity_entropy_known_answer():
    def item(pid, gender, hat):
        attrs = [0] * 27
        attrs[0], attrs[5] = gender, hat
        attrs[10] = attrs[18] = 1
        return ("x.jpg", pid, 0, {"attributes": tuple(attrs)})

    items = [item(1, 0, 0), item(1, 0, 0), item(2, 1, 0), item(3, 0, 1), item(4, 1, 0), item(0, 1, 1)]
    h = identity_entropy(items, MARKET)
    assert h["gender"] == pytest.approx(1.0)  # ids 1-4: two of each gender (pid 0, a distractor, is left out)
    assert h["hat"] == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
    assert h["upper_colour"] == 0.0  # every id wears black
