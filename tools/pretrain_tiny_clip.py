#!/usr/bin/env python
"""Pre-train (or reuse) the tiny CLIP on the procedural image/caption pairs and print its metrics.

    python tools/pretrain_tiny_clip.py                      # cached under $FASTREID_DATASETS/tiny_clip/...
    python tools/pretrain_tiny_clip.py --force --threads 1  # retrain (1 thread is faster on a busy machine)
    python tools/pretrain_tiny_clip.py --steps 300 --lr 2e-3  # a recipe override (its own cache folder)

The last line is machine-readable:
``tiny_clip r1=<R@1 %> chance=<chance %> reid_map=<mAP %> random_map=<mAP %> seconds=<pre-training s>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import torch

import plugins  # noqa: F401  (host-compat layer; keeps every tool's import order the same)
from plugins.modeling.backbones.clip.tiny import TinyClipRecipe, read_metrics, tiny_clip_weights

_OVERRIDES = {  # CLI flag -> recipe field
    "steps": int, "batch_size": int, "lr": float, "warmup_steps": int, "min_lr_ratio": float,
    "weight_decay": float, "embed_lr_scale": float, "train_ids": int, "max_shift": int,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("FASTREID_DATASETS", "datasets"),
                   help="dataset root ($FASTREID_DATASETS, default ./datasets)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, sampling and augmentation")
    p.add_argument("--force", action="store_true", help="retrain even when the cache holds this recipe")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, kind in _OVERRIDES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                       help=f"recipe override (default {getattr(TinyClipRecipe(), name)})")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    recipe = dataclasses.replace(TinyClipRecipe(), **overrides)
    path = tiny_clip_weights(args.root, seed=args.seed, progress=not args.no_progress, force=args.force,
                             recipe=recipe)
    m = read_metrics(path)
    rows = [
        ("weights", path),
        ("text->image R@1 / R@5 (%)", f"{m['r1']:.2f} / {m['r5']:.2f}"),
        ("chance R@1 (%)", f"{m['chance']:.2f}  ({m['num_test_images']} test images, "
                           f"{m['num_test_captions']} captions)"),
        (f"ReID mAP / R-1 on {m['reid_domain']}, proj CLS (%)", f"{m['reid_map']:.2f} / {m['reid_r1']:.2f}"),
        ("  same, random-init tower (%)", f"{m['random_map']:.2f} / {m['random_r1']:.2f}"),
        ("ReID mAP, CLS before proj: tiny / random (%)", f"{m['reid_cls_map']:.2f} / {m['random_cls_map']:.2f}"),
        ("loss first / last 10% of steps", f"{m['loss_first']:.3f} / {m['loss_last']:.3f}"),
        ("pre-training seconds (optimisation / total)", f"{m['train_seconds']} / {m['seconds']}"),
        ("peak RSS (MB)", f"{m['peak_rss_mb']}"),
        ("torch threads", f"{m['torch_threads']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"tiny_clip r1={m['r1']:.2f} chance={m['chance']:.2f} reid_map={m['reid_map']:.2f} "
          f"random_map={m['random_map']:.2f} seconds={m['train_seconds']}")
    return m


if __name__ == "__main__":
    main()
