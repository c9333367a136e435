#!/usr/bin/env python
"""DeMo's cost: trainable parameters and FLOPs of Table 5's ladder, and train / inference throughput.

    python tools/benchmark_demo.py [--model ViT-B-16|tiny] [--batch 8] [--iters 3] [--device cpu|cuda] [--amp]
        [--skip-speed]

- Parameters (trainable, BNNeck biases frozen): built from ``configs/demo/rgbnt201_ladder_{A,B,C,E}.yml`` (and
  ``rgbnt201_attention_h8.yml``) with 171 identities, random init on the meta device.
- FLOPs per sample (three modalities, 256x128): ``torch.utils.flop_counter.FlopCounterMode`` over one eval forward
  of the ViT-B/16 model. FlopCounterMode counts 2 FLOPs per multiply-add; the paper's (fvcore's) "G" counts
  multiply-adds, so the G printed here are MACs (FlopCounterMode / 2), comparable with Table 5 (34.28 G for A/B,
  35.10 G for D/E).
- Throughput (random weights; speed does not depend on the values), for each ladder step and for E with H = 4 vs 8:
  train step = forward + losses + backward + Adam on ``--batch`` triplets (P x 4 identities; one image per
  modality each), and inference = eval forward to the test feature; reported in triplets/s (one triplet = one
  RGB + NI + TI sample).
The last line is ``demo params_A=<n> params_B=<n> params_C=<n> params_E=<n> gflops_E=<x> train_img_s=<x>
infer_img_s=<x>`` (the throughputs of model E with H = 4 at ``--model``, in triplets/s).
"""
from __future__ import annotations

import argparse
import os

import torch
from tabulate import tabulate

import plugins  # noqa: F401  (host-compat patches + registrations)
from plugins.timing import seconds_per_call
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from plugins.config import import_methods, setup_cfg

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo")
SIZES = {"tiny": (128, 64), "ViT-B-16": (256, 128)}
IDS = 171
PAPER = {"A": (86.41, 34.28), "B": (87.99, 34.28), "C": (95.96, 35.09), "E": (98.79, 35.10)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-16", choices=sorted(SIZES), help="encoder of the throughput rows")
    p.add_argument("--batch", type=int, default=8, help="triplets per step (multiple of 4)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per row (after one warm-up)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only), as the official mixed precision")
    p.add_argument("--skip-speed", action="store_true", help="parameters and FLOPs only")
    return p.parse_args(argv)


def cfg_for(config: str, *opts):
    return setup_cfg(os.path.join(CONFIGS, config), ["MODEL.BACKBONE.PRETRAIN", "False", "MODEL.HEADS.NUM_CLASSES",
                                                     str(IDS), *opts])


def trainable(config: str) -> int:
    with torch.device("meta"):
        model = build_model(cfg_for(config, "MODEL.DEVICE", "meta"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def batch_of(n: int, h: int, w: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    mods = {m: (torch.rand(n, 3, h, w, generator=g) * 255).to(device) for m in ("RGB", "NI", "TI")}
    return {"modalities": mods, "images": mods["RGB"], "targets": torch.arange(n // 4).repeat_interleave(4).to(device),
            "camids": (torch.arange(n) % 4).to(device)}


def macs_per_sample(config: str) -> float:
    """G multiply-adds of one eval forward of one triplet (ViT-B/16, 256x128)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg_for(config, "MODEL.DEVICE", "cpu")).eval()
    batch = batch_of(4, 256, 128, "cpu")
    batch = {k: (v[:1] if torch.is_tensor(v) else {m: t[:1] for m, t in v.items()}) for k, v in batch.items()}
    counter = FlopCounterMode(display=False)
    # the math attention backend runs attention as matmuls, which FlopCounterMode counts on every torch version
    # (some versions do not count the fused CPU kernels); FlopCounterMode's module tracker needs autograd on
    with sdpa_kernel([SDPBackend.MATH]), counter:
        model(batch)
    return counter.get_total_flops() / 2 / 1e9


def throughput(config: str, args, *opts) -> tuple:
    """(train triplets/s, inference triplets/s) of ``config`` at ``--model``."""
    h, w = SIZES[args.model]
    extra = ["MODEL.DEVICE", args.device, "INPUT.SIZE_TRAIN", f"[{h}, {w}]", "INPUT.SIZE_TEST", f"[{h}, {w}]"]
    if args.model == "tiny":
        extra += ["MODEL.BACKBONE.CLIP.NAME", "tiny", "MODEL.BACKBONE.CLIP.WEIGHTS", ""]
    model = build_model(cfg_for(config, *extra, *opts))
    batch = batch_of(args.batch, h, w, args.device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    amp = args.amp and args.device.startswith("cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    def infer():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            model(batch)

    model.train()
    with EventStorage():
        train_s = seconds_per_call(step, args.iters, args.device)
    model.eval()
    infer_s = seconds_per_call(infer, args.iters, args.device)
    return args.batch / train_s, args.batch / infer_s


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.batch % 4:
        raise ValueError(f"--batch must be a multiple of 4 (P ids x 4 triplets), got {args.batch}")
    import_methods()
    torch.manual_seed(0)
    ladder = {s: f"rgbnt201_ladder_{s}.yml" for s in ("A", "B", "C", "E")}
    params = {s: trainable(c) for s, c in ladder.items()}
    params["E (H=8)"] = trainable("rgbnt201_attention_h8.yml")
    macs = {s: macs_per_sample(ladder[s]) for s in ("A", "C", "E")}
    macs["B"] = macs_per_sample(ladder["B"])
    rows = [[s, f"{params[s]:,}", f"{PAPER[s][0]:.2f}M", f"{macs[s]:.2f}", f"{PAPER[s][1]:.2f}",
             f"{100 * (macs[s] / PAPER[s][1] - 1):+.2f}%"] for s in ("A", "B", "C", "E")]
    print(tabulate(rows, headers=["step", "trainable params", "paper", "GMACs/triplet", "paper G", "diff"],
                   tablefmt="github"))
    print(f"E with H = 8: {params['E (H=8)']:,} trainable parameters")
    speed = {}
    if not args.skip_speed:
        for name, config, opts in [("A", ladder["A"], ()), ("B", ladder["B"], ()), ("C", ladder["C"], ()),
                                   ("D", "rgbnt201_ladder_D.yml", ()), ("E (H=4)", ladder["E"], ()),
                                   ("E (H=8)", ladder["E"], ("DEMO.MOE_HEADS", "8"))]:
            speed[name] = throughput(config, args, *opts)
        print(tabulate([[n, f"{t:.2f}", f"{i:.2f}"] for n, (t, i) in speed.items()],
                       headers=[f"step ({args.model}, {args.device}, batch {args.batch})", "train triplets/s",
                                "inference triplets/s"], tablefmt="github"))
    train, infer = speed.get("E (H=4)", (float("nan"), float("nan")))
    print(f"demo params_A={params['A']} params_B={params['B']} params_C={params['C']} params_E={params['E']} "
          f"gflops_E={macs['E']:.2f} train_img_s={train:.2f} infer_img_s={infer:.2f}")
    return {"params": params, "gmacs": macs, "speed": speed}


if __name__ == "__main__":
    main()
