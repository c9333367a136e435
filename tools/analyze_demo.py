#!/usr/bin/env python
"""DeMo analyses of a trained model (trains nothing): per-instance ATMoE weights over the query set (Fig. 6 style
plot + CSV) and a t-SNE of test features coloured by identity (Fig. 4), for any ladder step.

    python tools/analyze_demo.py --config-file configs/demo/rgbnt201.yml MODEL.WEIGHTS model_final.pth \
        [--step A|B|C|D|E] [--output-dir DIR] [--max-ids 20] [KEY VALUE ...]

``--step`` switches the config to that ladder step (Table 5) before the model is built (so the checkpoint must be
that step's). Writes ``atmoe_weights.csv`` / ``atmoe_weights.png`` (steps with ATMoE) and ``tsne_<step>.png`` to
``--output-dir`` (default ``OUTPUT_DIR/analysis``). The last line is ``demo_analysis <file> ...``.
"""
from __future__ import annotations

import argparse
import os
import sys

import plugins  # noqa: F401  (host-compat patches + shared registrations)
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.utils.checkpoint import Checkpointer
from plugins.config import import_methods, setup_cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--step", default="", help="ladder step of the checkpoint (A..E); default: the config as is")
    p.add_argument("--output-dir", default="")
    p.add_argument("--max-ids", type=int, default=20, help="identities in the t-SNE plot (0: all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    import_methods()
    from plugins.demo.analysis import collect, write_gate_weights, write_tsne
    from plugins.demo.ladder import ladder_step_cfg
    from plugins.demo.trainer import DeMoTrainer, check_demo_cfg
    from plugins.engine.loaders import make_test_loader

    cfg = setup_cfg(args.config_file, args.opts, freeze=False)
    cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint supplies every weight
    cfg.freeze()
    if args.step:
        cfg = ladder_step_cfg(cfg, args.step)
    check_demo_cfg(cfg)
    if not cfg.MODEL.WEIGHTS or not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SystemExit(f"analyze_demo: MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' is not a file (a trained DeMo checkpoint)")
    model = DeMoTrainer.build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    name = cfg.DATASETS.TESTS[0]
    data = DATASET_REGISTRY.get(name)(root=os.getenv("FASTREID_DATASETS", "datasets"))
    out = args.output_dir or os.path.join(cfg.OUTPUT_DIR, "analysis")
    step = args.step or "model"
    written = []
    loader, _ = make_test_loader(cfg, data.query)
    feats, gate = collect(model, loader, limit=len(data.query))
    if gate is not None:
        paths = write_gate_weights(gate, data.query, out, title=f"DeMo ATMoE weights on {name} queries")
        written += [paths["csv"], paths["png"]]
    else:
        print(f"step {step} has no ATMoE: no gate weights to plot")
    items = list(data.query) if data.gallery == data.query else list(data.query) + list(data.gallery)
    if len(items) > len(data.query):
        loader, _ = make_test_loader(cfg, items)
        feats, _ = collect(model, loader, limit=len(items))
    written.append(write_tsne(feats, [it[1] for it in items], os.path.join(out, f"tsne_{step}.png"),
                              title=f"DeMo {step}: t-SNE of {name} test features", max_ids=args.max_ids))
    print("demo_analysis " + " ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
