"""tools/compare_runs.py: per-row values, mean and sample std over runs, rows missing in some runs."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import compare_runs  # noqa: E402


def write(folder: Path, rows: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(rows))
    return folder


def row(group, m, r1):
    return {"group": group, "mAP": m, "Rank-1": r1, "Rank-5": 0.0, "Rank-10": 0.0}


def test_mean_and_sample_std_over_seeds(tmp_path, capsys):
    a = write(tmp_path / "seed0", {"SAGE": row("learned merge", 40.5, 38.0), "Blend": row("source model", 30.0, 29.0)})
    b = write(tmp_path / "seed1", {"SAGE": row("learned merge", 37.0, 36.0)})
    c = write(tmp_path / "seed2", {"SAGE": row("learned merge", 43.0, 40.0), "New": row("x", 10.0, 11.0)})
    records = compare_runs.compare([compare_runs.read_results(str(p)) for p in (a, b, c)])
    by = {r["method"]: r for r in records}
    assert [r["method"] for r in records] == ["SAGE", "Blend", "New"]
    # 40.5, 37.0, 43.0: mean 40.1667, sample variance (0.1111 + 10.0278 + 8.0278) / 2 = 9.0833
    assert by["SAGE"]["mean"] == pytest.approx(40.1667, abs=1e-4)
    assert by["SAGE"]["std"] == pytest.approx(9.0833 ** 0.5, abs=1e-4)
    assert by["SAGE"]["mean_rank1"] == pytest.approx(38.0)
    assert by["Blend"]["per_run"] == [30.0, None, None] and by["Blend"]["std"] is None
    compare_runs.main([str(a), str(b), str(c), "--csv", str(tmp_path / "t.csv")])
    out = capsys.readouterr().out
    assert "| learned merge | SAGE     | 40.5 / 37.0 / 43.0" in out and "40.2 ± 3.0" in out
    assert "30.0 / - / -" in out
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("group,method,mAP seed0,mAP seed1")


def test_missing_or_bad_results_fail_with_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        compare_runs.read_results(str(tmp_path))
    (tmp_path / "results.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        compare_runs.read_results(str(tmp_path))
