#!/usr/bin/env python
"""One table over several runs of a pipeline (e.g. the same config with ``PLUGINS.SEED`` 0 / 1 / 2).

    python tools/compare_runs.py logs/sage/demo_seed0 logs/sage/demo_seed1 logs/sage/demo_seed2 \
        [--metric mAP] [--csv table.csv]

Each argument is a run folder holding the ``results.json`` its pipeline writes (or that file itself). Rows keep the
first run's order (rows only in later runs follow). Per row: the metric in every run, their mean +- the sample
standard deviation (n - 1; a single value has none) and the mean Rank-1; a run without the row shows ``-`` and is
left out of the mean. Prints a Markdown table; ``--csv`` also writes the numbers unrounded.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10")


def read_results(path: str) -> Dict[str, Dict]:
    """``results.json`` of a run folder (or the file itself) -> {row: {"group": ..., metric: value}}."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} does not exist: give run folders holding a results.json")
    with open(file) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} is not valid JSON ({err})") from None
    if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
        raise ValueError(f"{file} is not a results table (row name -> metrics)")
    return rows


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def compare(runs: Sequence[Dict[str, Dict]], metric: str = "mAP") -> List[Dict]:
    """One record per row: group, method, the metric per run (None where absent), mean, std, mean Rank-1."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    names: List[str] = []
    for rows in runs:
        names += [n for n in rows if n not in names]
    records = []
    for name in names:
        present = [rows[name] for rows in runs if name in rows]
        values = [float(r[metric]) for r in present]
        mean, std = mean_std(values)
        records.append({"group": present[0].get("group", ""), "method": name,
                        "per_run": [float(rows[name][metric]) if name in rows else None for rows in runs],
                        "mean": mean, "std": std,
                        "mean_rank1": statistics.fmean(float(r["Rank-1"]) for r in present)})
    return records


def markdown(records: Sequence[Dict], run_names: Sequence[str], metric: str) -> str:
    body = [[r["group"], r["method"], " / ".join("-" if v is None else f"{v:.1f}" for v in r["per_run"]),
             f"{r['mean']:.1f}" + ("" if r["std"] is None else f" ± {r['std']:.1f}"), f"{r['mean_rank1']:.1f}"]
            for r in records]
    return tabulate(body, headers=["group", "method", f"{metric} ({' / '.join(run_names)})", f"mean {metric}",
                                   "mean R-1"], tablefmt="github")


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (or results.json files)")
    ap.add_argument("--metric", default="mAP", choices=METRICS)
    ap.add_argument("--csv", default="", help="also write the table to this CSV file")
    args = ap.parse_args(argv)
    runs = [read_results(p) for p in args.runs]
    names = [os.path.basename(os.path.normpath(p if os.path.isdir(p) else os.path.dirname(p))) for p in args.runs]
    records = compare(runs, args.metric)
    print(markdown(records, names, args.metric))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["group", "method", *[f"{args.metric} {n}" for n in names], f"mean {args.metric}",
                        "std", "mean Rank-1"])
            for r in records:
                w.writerow([r["group"], r["method"], *["" if v is None else v for v in r["per_run"]], r["mean"],
                            "" if r["std"] is None else r["std"], r["mean_rank1"]])


if __name__ == "__main__":
    main()
