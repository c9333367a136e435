#!/usr/bin/env python
"""Find every image a training or evaluation would fail on (truncated, corrupt, not an image, missing), before it
starts.

    python tools/check_images.py --config-file CFG [KEY VALUE ...]   # the train / query / gallery items of
                                                                     # DATASETS.NAMES and DATASETS.TESTS, with
                                                                     # their modality images
    python tools/check_images.py --root DIR                          # every image file under DIR

Each file is fully decoded with PIL (what fast-reid's ``read_image`` does). Prints a table of the unreadable files
with the reason; exits 1 when there is any. Last line: ``check_images files=<n> unreadable=<k> seconds=<s>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, Iterable, List, Sequence

from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

import plugins  # noqa: F401  (host-compat layer + dataset readers)
from plugins.config import setup_cfg

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def problem_of(path: str) -> str:
    """'' when ``path`` decodes completely, else the reason."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return ""


def files_under(root: str) -> List[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root '{root}' is not a folder")
    return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                  if f.lower().endswith(IMAGE_SUFFIXES))


def item_paths(items: Iterable[tuple]) -> List[str]:
    """Image paths of reader items ``(path, pid, camid[, extras])``, modality images included."""
    paths = []
    for item in items:
        paths.append(item[0])
        extras = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        paths.extend((extras.get("modalities") or {}).values())
    return paths


def files_of_config(cfg) -> List[str]:
    from plugins.engine.loaders import dataset_items

    paths = item_paths(dataset_items(cfg.DATASETS.NAMES, "train"))
    for split in ("query", "gallery"):
        paths += item_paths(dataset_items(cfg.DATASETS.TESTS, split))
    return sorted(set(paths))


def check(paths: Sequence[str], progress: bool = True) -> Dict[str, str]:
    """path -> reason, for the unreadable ``paths``."""
    bad = {}
    for path in tqdm(paths, desc="decoding images", unit="img", disable=not progress):
        reason = problem_of(path)
        if reason:
            bad[path] = reason
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-file", help="check the images of this config's datasets")
    src.add_argument("--root", help="check every image file under this folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = files_under(args.root) if args.root else files_of_config(setup_cfg(args.config_file, args.opts))
    bad = check(paths, progress=not args.no_progress)
    if bad:
        print(tabulate(sorted(bad.items()), headers=["unreadable image", "reason"], tablefmt="github"))
    print(f"check_images files={len(paths)} unreadable={len(bad)} seconds={time.perf_counter() - t0:.1f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
