#!/usr/bin/env python
"""SAGE-reID analyses (gate weights, gate correlation, expert-vs-merged CKA) of a finished pipeline run.

    python tools/analyze_sage.py --config-file configs/sage/demo.yml [--output DIR] [--gate sage|mole]
        [--reduce mean|cls] [--max-images N] [KEY VALUE ...]

Use the config (and overrides) the run was trained with: its OUTPUT_DIR holds the checkpoints. Tables go to
``OUTPUT_DIR/analysis`` (or ``--output``) as CSV, markdown and heatmaps, and are printed.
"""
import argparse

import plugins  # applies the host-compatibility layer and registers every shared plugin component
from plugins.config import import_methods, setup_cfg
from plugins.sage.analysis_io import analyze_pipeline_run
from plugins.sage.layout import TRAINED_GATES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the run's config file")
    p.add_argument("--output", default="", metavar="DIR", help="output folder (default: OUTPUT_DIR/analysis)")
    p.add_argument("--gate", default="sage", choices=sorted(TRAINED_GATES),
                   help="stage-2 model to analyse: stage2/sage (SAGE) or stage2/mole (MoLE baseline)")
    p.add_argument("--reduce", default="mean", choices=("mean", "cls"),
                   help="per-image row of a layer output for CKA: token mean (default) or class token (block 0's "
                        "QKV is then constant over images and its CKA NaN)")
    p.add_argument("--max-images", type=int, default=0, metavar="N", help="first N query images only (0: all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return p


def setup(args):
    """The config as tools/train_net.py builds it (plugins.config.setup_cfg)."""
    import_methods()
    return setup_cfg(args.config_file, args.opts)


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    if args.max_images < 0:
        raise ValueError(f"--max-images must be >= 0, got {args.max_images}")
    cfg = setup(args)
    result = analyze_pipeline_run(cfg, output_dir=args.output or None, gate=args.gate, reduce=args.reduce,
                                  max_images=args.max_images)
    print(f"analysis of {result['paths'].stage2_checkpoint} ({result['num_images']} query images) written to "
          f"{result['output_dir']}")
    return result["output_dir"]


if __name__ == "__main__":
    main()
