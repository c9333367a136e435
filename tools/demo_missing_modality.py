#!/usr/bin/env python
"""DeMo's missing-modality evaluation (the paper's Tables 3 and 4): trains nothing.

    python tools/demo_missing_modality.py --config-file configs/demo/rgbnt201.yml MODEL.WEIGHTS model_final.pth \
        [--output-dir DIR] [KEY VALUE ...]

Builds ``DeMo`` from the config, loads ``MODEL.WEIGHTS`` (a fast-reid checkpoint: ours, or an official one
converted by ``tools/convert_weights.py --from demo``), and evaluates ``DATASETS.TESTS[0]`` with the full input
and with each of M(R), M(N), M(T), M(RN), M(RT), M(NT): the missing modalities' NORMALISED inputs are zeros in
query and gallery (the camera embedding is still added). Prints the table (mAP and Rank-1 per setting, and the
average of the six missing settings) and writes ``missing_modality.csv`` / ``.md`` to ``--output-dir`` (default
``OUTPUT_DIR``). The last line printed is ``demo_missing average_mAP=<x> average_R1=<x> csv=<path>``.
"""
from __future__ import annotations

import argparse
import os
import sys

import plugins  # noqa: F401  (host-compat patches + shared registrations)
from fastreid.utils.checkpoint import Checkpointer
from plugins.config import import_methods, setup_cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output-dir", default="", help="where the CSV / Markdown go (default: OUTPUT_DIR)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    import_methods()
    from plugins.demo.evaluation import missing_modality_table, write_missing_table
    from plugins.demo.trainer import DeMoTrainer, check_demo_cfg

    cfg = setup_cfg(args.config_file, args.opts, freeze=False)
    if not cfg.MODEL.WEIGHTS or not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SystemExit(f"demo_missing_modality: MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' is not a file (a trained DeMo "
                         f"checkpoint)")
    cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint supplies every weight
    cfg.freeze()
    check_demo_cfg(cfg)
    model = DeMoTrainer.build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    rows = missing_modality_table(cfg, model.eval())
    out = args.output_dir or cfg.OUTPUT_DIR
    print(write_missing_table(rows, out, title=f"Missing modalities: {cfg.MODEL.WEIGHTS} on {cfg.DATASETS.TESTS[0]}"))
    avg = rows["Average"]
    print(f"demo_missing average_mAP={avg['mAP']:.2f} average_R1={avg['Rank-1']:.2f} "
          f"csv={os.path.join(out, 'missing_modality.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
