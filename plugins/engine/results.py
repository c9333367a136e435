"""The pipeline's results rows: kept in ``results.json`` (so a resumed run skips rows already measured) and written
as a Markdown and a CSV table."""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, Mapping, Optional

from tabulate import tabulate

__all__ = ["METRICS", "ResultsTable", "metrics_of"]

METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10")


def metrics_of(results: Mapping, where: str) -> Dict[str, float]:
    """The four reported metrics from fast-reid's ``DefaultTrainer.test`` output of one test dataset."""
    missing = [m for m in METRICS if m not in results]
    if missing:
        raise KeyError(f"{where}: evaluation results lack {missing} (got {sorted(results)})")
    return {m: float(results[m]) for m in METRICS}


class ResultsTable:
    """Ordered rows ``name -> {"group": str, metric: value}`` persisted in ``<directory>/results.json``."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, "results.json")
        self.rows: Dict[str, Dict] = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                try:
                    self.rows = json.load(f)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path} is not valid JSON ({err}); delete it to re-measure every row") \
                        from None

    def __contains__(self, name: str) -> bool:
        return name in self.rows

    def get(self, name: str) -> Optional[Dict]:
        return self.rows.get(name)

    def add(self, name: str, group: str, metrics: Mapping[str, float], save: bool = True) -> None:
        self.rows[name] = {"group": group, **{m: float(metrics[m]) for m in METRICS}}
        if save:
            self.save()

    def save(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.rows, f, indent=2)
        os.replace(tmp, self.path)  # never leave a half-written file behind a kill

    def format(self, order: Optional[list] = None, fmt: str = "github") -> str:
        names = [n for n in (order or list(self.rows)) if n in self.rows]
        body = [[self.rows[n]["group"], n] + [f"{self.rows[n][m]:.2f}" for m in METRICS] for n in names]
        return tabulate(body, headers=["group", "method", *METRICS], tablefmt=fmt)

    def write_tables(self, order: Optional[list] = None, title: str = "") -> str:
        """Write ``results.md`` and ``results.csv``; returns the Markdown table."""
        table = self.format(order)
        with open(os.path.join(self.directory, "results.md"), "w") as f:
            f.write((f"# {title}\n\n" if title else "") + table + "\n")
        names = [n for n in (order or list(self.rows)) if n in self.rows]
        with open(os.path.join(self.directory, "results.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["group", "method", *METRICS])
            for n in names:
                w.writerow([self.rows[n]["group"], n] + [self.rows[n][m] for m in METRICS])
        return table
