#!/usr/bin/env python
"""Write the procedural multi-domain ReID dataset to disk in real dataset formats.

    python tools/make_synthetic_data.py --root datasets/synthreid --domains A,B,C,D --ids 48,32 \
        --images-per-id 6 --cameras 3 --size 128x64 --formats market,market_attribute,rgbnt201,cuhk_pedes

Prints one row per domain and format (what was written, how many images) and the time taken. Existing folders
written with the same version / seed / sizes are reused unless --force is given.
"""
import argparse
import sys
import time
from pathlib import Path

from tabulate import tabulate

import plugins  # noqa: F401  (host-compat layer; keeps every tool's import order the same)
from plugins.data.synthetic import FORMATS, SynthConfig, generate


def _pair(text: str, sep: str, what: str):
    try:
        a, b = (int(v) for v in text.lower().split(sep))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected two integers separated by '{sep}', got '{text}'")
    return a, b


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="datasets/synthreid", help="output folder; one sub-folder per domain")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    p.add_argument("--domains", default="A,B,C,D",
                   help="comma-separated domain names; A-D are presets, other names get a seeded random style")
    p.add_argument("--ids", default="48,32", type=lambda s: _pair(s, ",", "--ids"),
                   help="TRAIN,TEST identities per domain")
    p.add_argument("--images-per-id", type=int, default=6, help="boxes per identity, spread over the cameras")
    p.add_argument("--cameras", type=int, default=3, help="cameras per domain (1-9; RGBNT201 allows 1-4)")
    p.add_argument("--size", default="128x64", type=lambda s: _pair(s, "x", "--size"), help="HEIGHTxWIDTH")
    p.add_argument("--junk", type=int, default=6, help="junk (-1) gallery boxes per domain")
    p.add_argument("--distractors", type=int, default=6, help="distractor (0000) gallery boxes per domain")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--force", action="store_true", help="regenerate even if an up-to-date folder exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    cfg = SynthConfig(seed=args.seed, train_ids=args.ids[0], test_ids=args.ids[1],
                      images_per_id=args.images_per_id, num_cameras=args.cameras, height=args.size[0],
                      width=args.size[1], junk=args.junk, distractors=args.distractors)
    t0 = time.perf_counter()
    manifests = generate(args.root, domains, cfg, formats, progress=not args.no_progress, force=args.force)
    seconds = time.perf_counter() - t0
    rows, total = [], 0
    for d, m in manifests.items():
        for w in m["written"]:
            rows.append([d, w["format"], str(Path(args.root) / d / w["path"]), w["images"], w["detail"]])
            total += w["images"]
    print(tabulate(rows, headers=["domain", "format", "path", "# images", "detail"], tablefmt="pipe"))
    print(f"{total} image files in {len(domains)} domain(s) at {cfg.height}x{cfg.width}, seed {cfg.seed}: "
          f"{seconds:.1f} s (folders already up to date are reused; --force regenerates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
