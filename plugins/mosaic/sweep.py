"""The inclusion-configuration sweep of the attribute-importance study (paper Sec. 4.1, Table 3).

A configuration is a named set of study attributes whose experts are on. ``inclusion_configurations`` builds the
list (all, none, each single attribute, each group, leave-one-out, extra ones); ``SweepTable`` keeps one row per
configuration in ``results.csv`` (``configuration``, one 0/1 column per study attribute, then the metrics), written
after every configuration, so a killed sweep resumes where it stopped. ``compare_modes`` says how far a
test-time sweep (one model, groups switched off at test) and a retrained one disagree.
"""
from __future__ import annotations

import csv
import math
import os
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from scipy.stats import spearmanr
from tabulate import tabulate

from .config import SWEEP_KINDS
from .schema import GROUPS, ExpertSchema

__all__ = ["SWEEP_METRICS", "Configuration", "inclusion_configurations", "SweepTable", "run_sweep",
           "compare_modes", "safe_name"]

SWEEP_METRICS = (("mAP", "mAP"), ("R-1", "Rank-1"), ("R-5", "Rank-5"), ("R-10", "Rank-10"))  # csv column, metric
Configuration = Tuple[str, Tuple[str, ...]]  # (name, included study attributes in schema order)


def inclusion_configurations(schema: ExpertSchema, kinds: Sequence[str] = tuple(SWEEP_KINDS),
                             extra: Sequence[str] = ()) -> List[Configuration]:
    """Configurations in a fixed order; one with the same attribute set as an earlier one is left out.

    ``extra``: "name=attr+attr+..." (reader group names)."""
    unknown = [k for k in kinds if k not in SWEEP_KINDS]
    if unknown:
        raise ValueError(f"MOSAIC.SWEEP.KINDS has unknown entries {unknown}; choose from {list(SWEEP_KINDS)}")
    names = schema.names
    out: List[Configuration] = []
    for kind in kinds:
        if kind == "all":
            out.append(("all", names))
        elif kind == "none":
            out.append(("none", ()))
        elif kind == "single":
            out.extend((f"only {n}", (n,)) for n in names)
        elif kind == "group":
            for group, supers in GROUPS.items():
                members = tuple(a.name for a in schema.attributes if a.supercategory in supers)
                if members:
                    out.append((f"group {group}", members))
        elif kind == "leave_one_out":
            out.extend((f"without {n}", tuple(m for m in names if m != n)) for n in names)
    for entry in extra:
        if "=" not in entry:
            raise ValueError(f"MOSAIC.SWEEP.EXTRA entry {entry!r} must read 'name=attr+attr+...'")
        name, _, members = entry.partition("=")
        out.append((name.strip(), schema.resolve([m.strip() for m in members.split("+") if m.strip()])))
    seen, unique = set(), []
    for name, members in out:
        key = frozenset(members)
        if key in seen:
            continue
        if any(name == n for n, _ in unique):
            raise ValueError(f"two sweep configurations are named {name!r}")
        seen.add(key)
        unique.append((name, members))
    return unique


def safe_name(name: str) -> str:
    """A configuration name as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "config"


class SweepTable:
    """``results.csv`` of a sweep: rows ``configuration, <attribute 0/1>..., mAP, R-1, R-5, R-10``."""

    def __init__(self, path: str, attribute_names: Sequence[str]):
        self.path = path
        self.attribute_names = tuple(attribute_names)
        self.header = ["configuration", *self.attribute_names, *(c for c, _ in SWEEP_METRICS)]
        self.rows: Dict[str, Dict[str, float]] = {}
        if os.path.isfile(path):
            self._read()

    def _read(self) -> None:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != self.header:
                raise ValueError(f"'{self.path}' has columns {reader.fieldnames}, this sweep writes {self.header} "
                                 f"(another dataset or attribute schema?); move it away to start the sweep again")
            for row in reader:
                self.rows[row["configuration"]] = {k: float(v) for k, v in row.items() if k != "configuration"}

    def __contains__(self, name: str) -> bool:
        return name in self.rows

    def add(self, name: str, included: Iterable[str], metrics: Dict[str, float]) -> None:
        on = set(included)
        row = {a: float(a in on) for a in self.attribute_names}
        row.update({column: float(metrics[key]) for column, key in SWEEP_METRICS})
        self.rows[name] = row
        self.save()

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.header)
            for name, row in self.rows.items():
                w.writerow([name, *(int(row[a]) for a in self.attribute_names),
                            *(f"{row[c]:.4f}" for c, _ in SWEEP_METRICS)])
        os.replace(tmp, self.path)  # a killed sweep never leaves a half-written table

    def markdown(self, order: Optional[Sequence[str]] = None) -> str:
        names = [n for n in (order or list(self.rows)) if n in self.rows]
        body = [[n, " ".join(a for a in self.attribute_names if self.rows[n][a]) or "-"]
                + [f"{self.rows[n][c]:.2f}" for c, _ in SWEEP_METRICS[:2]] for n in names]
        return tabulate(body, headers=["configuration", "attributes on", "mAP", "R-1"], tablefmt="github")


def run_sweep(table: SweepTable, configurations: Sequence[Configuration],
              evaluate: Callable[[str, Tuple[str, ...]], Dict[str, float]],
              progress: Callable[[str], None] = print) -> SweepTable:
    """Evaluate every configuration not yet in ``table`` (``evaluate(name, included) -> metrics`` with keys
    mAP, Rank-1, Rank-5, Rank-10), saving after each one."""
    todo = [(n, m) for n, m in configurations if n not in table]
    progress(f"sweep: {len(configurations) - len(todo)} of {len(configurations)} configurations already in "
             f"{table.path}; {len(todo)} to go")
    for k, (name, members) in enumerate(todo, 1):
        metrics = evaluate(name, members)
        table.add(name, members, metrics)
        progress(f"sweep [{k}/{len(todo)}] {name}: mAP {metrics['mAP']:.2f}, R-1 {metrics['Rank-1']:.2f}")
    return table


def compare_modes(test: SweepTable, retrained: SweepTable, metric: str = "mAP") -> Dict[str, float]:
    """How far the two sweep modes disagree on the configurations both ran: mean and max |difference| of
    ``metric`` and the Spearman rank correlation of the configurations' scores."""
    shared = [n for n in retrained.rows if n in test.rows]
    if not shared:
        return {"configurations": 0}
    a = [test.rows[n][metric] for n in shared]
    b = [retrained.rows[n][metric] for n in shared]
    diffs = [abs(x - y) for x, y in zip(a, b)]
    rho = spearmanr(a, b).statistic if len(shared) > 2 else float("nan")
    return {"configurations": len(shared), "mean_abs_diff": sum(diffs) / len(diffs), "max_abs_diff": max(diffs),
            "spearman": float(rho) if not math.isnan(rho) else float("nan"),
            "mean_test": sum(a) / len(a), "mean_retrained": sum(b) / len(b)}
