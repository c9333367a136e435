#!/usr/bin/env python
"""MoSAIC-ReID's attribute-importance study of a results CSV (paper section 4.4, Tables 4, 5, 7): which attributes
matter for the metric.

    python tools/attribute_importance.py --results results.csv --out DIR [--metrics mAP R-1] [--seed 0]
        [--n-estimators 500] [--n-repeats 30] [--attributes gender hair ...]

The CSV holds one row per attribute-inclusion configuration (the unit of observation): a 0/1 (or True/False)
column per attribute, saying whether its experts were switched on, and the metric columns (default: those of
``mAP``, ``R-1`` present). Any other column (a configuration name, a mode) is ignored; ``--attributes`` names the
attribute columns explicitly instead. No config is needed, so any sweep of that shape can be analysed.

Per metric M, written to ``--out``: ``glm_M.csv`` (Gaussian GLM of M on the indicators: coef, std err, z, p, 95%
CI; rank-deficient attributes dropped and listed), ``importance_M.csv`` (random-forest FIMP, permutation
importance PIMP, mean |SHAP|, Student t-test included vs excluded with p and Cohen's d; t > 0 means inclusion
raises M), ``shap_M.png``, ``importance_M.png``, ``effect_sizes_M.png``; then ``report.md`` (written last). The
report's tables are printed; the last line is ``attribute_importance configurations=<n> metrics=<m,...>
out=<DIR>``. Reruns with the same seed give byte-identical CSVs.
"""
import argparse
import logging

import plugins  # noqa: F401  (the package every tool imports; the study itself needs no config)
from plugins.mosaic.importance import ResultsFormatError, analyse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, metavar="CSV", help="one row per configuration: 0/1 attribute "
                   "columns and metric columns")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="M",
                   help="metric columns to analyse (default: those of mAP, R-1 present)")
    p.add_argument("--attributes", nargs="+", default=None, metavar="A",
                   help="attribute columns (default: every other column whose cells are all 0/1)")
    p.add_argument("--seed", type=int, default=0, help="random forest and permutation seed")
    p.add_argument("--n-estimators", type=positive_int, default=500, help="trees in the random forest")
    p.add_argument("--n-repeats", type=positive_int, default=30, help="shuffles per attribute for PIMP")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # progress on stderr, tables on stdout
    try:
        result = analyse(args.results, args.out, metrics=args.metrics, attributes=args.attributes, seed=args.seed,
                         n_estimators=args.n_estimators, n_repeats=args.n_repeats)
    except (FileNotFoundError, ResultsFormatError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")  # a data problem, not a bug: the message, no traceback
    print(result["markdown"])
    print("files:")
    for path in result["files"]:
        print(f"  {path}")
    metrics = ",".join(result["glm"])
    print(f"attribute_importance configurations={result['configurations']} metrics={metrics} out={args.out}")
    return result


if __name__ == "__main__":
    main()
