#!/usr/bin/env python
"""Routing analysis of a trained DM-Adapter model over the test split of DATASETS.TESTS: expert usage per block
and tower (heatmap PNG + CSV, with the normalised entropy per block: routing balance or collapse) and the learned
router mixing scalar a per block.

    python tools/analyze_dmadapter.py --config-file configs/dmadapter/demo.yml \
        --weights logs/dmadapter/demo/model_best.pth [--output DIR] [--split test] [KEY VALUE ...]

Writes expert_usage.csv, router_alpha.csv and expert_usage.png into --output (default OUTPUT_DIR/analysis) and
prints one line per tower: ``usage tower=<t> mean_entropy=<e> min_entropy=<e>``.
"""
from __future__ import annotations

import argparse
import os
import sys

import plugins  # noqa: F401  (host-compat patches, registrations)
from plugins.config import import_methods, setup_cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="a DMAdapter checkpoint (model_best.pth, or a converted one)")
    p.add_argument("--output", default="")
    p.add_argument("--split", default="test")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    if not os.path.isfile(args.weights):
        raise SystemExit(f"analyze_dmadapter: error: --weights '{args.weights}' does not exist")
    import_methods()
    from plugins.dmadapter.analysis import expert_usage, router_alphas, usage_rows, write_usage
    from plugins.dmadapter.data import TextImageTestLoader, text_reader
    from plugins.dmadapter.trainer import DMAdapterTrainer
    from plugins.engine.eval_only import load_eval_weights

    cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.BACKBONE.PRETRAIN", "False"])
    model = DMAdapterTrainer.build_model(cfg)
    load_eval_weights(model, args.weights)
    out = args.output or os.path.join(cfg.OUTPUT_DIR, "analysis")
    counts = None
    for name in cfg.DATASETS.TESTS:
        data = text_reader(name, args.split)
        part = expert_usage(model, TextImageTestLoader(cfg, data.query, data.gallery))
        counts = part if counts is None else {k: counts[k] + part[k] for k in counts}
    paths = write_usage(out, counts, router_alphas(model), title=f"{os.path.basename(args.weights)} on "
                                                                 f"{'+'.join(cfg.DATASETS.TESTS)} ({args.split})")
    rows = usage_rows(counts)
    for tower in counts:
        ent = [r["entropy"] for r in rows if r["tower"] == tower]
        print(f"usage tower={tower} mean_entropy={sum(ent) / len(ent):.3f} min_entropy={min(ent):.3f}")
    print(f"wrote {paths['usage']}, {paths['alpha']}, {paths['heatmap']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
