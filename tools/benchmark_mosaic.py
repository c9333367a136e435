#!/usr/bin/env python
"""Cost of MoSAIC-ReID over CLIP-ReID: parameters, FLOPs and test-time throughput, experts in the last K blocks.

    python tools/benchmark_mosaic.py [--model ViT-B-16|tiny] [--ks 1 12] [--batch 8] [--repeats 5] [--warmup 1]
        [--threads N] [--device cpu|cuda] [--amp]

Models: ``configs/mosaic/market.yml`` (Market-1501-attribute schema: 35 experts, rank 16, mean pooling over tokens
and over active experts, the summary token added to every token) with ``MOSAIC.LAST_K`` K, and the same config with
``MODEL.META_ARCHITECTURE CLIPReID`` as the baseline; 751 identities, random weights (PRETRAIN False: nothing is
downloaded; neither speed nor counts depend on the values). ViT-B-16 runs at 256x128, tiny at 128x64.

Rows, all measured in this run: CLIP-ReID; MoSAIC at each K of ``--ks`` with the oracle router (the paper's test
setting: ground-truth attributes in ``batch["attributes"]``); MoSAIC at the largest K with the predicted router
(``router_mode = "predicted"``: the attribute head on the frozen tower's CLS, i.e. one extra no-grad forward of
the tower without experts before the routed forward). Columns:
- params (M): every parameter of the model module: both CLIP towers (the text tower included: CLIP-ReID keeps it
  for its training losses, it does not run at test), prompts, BNNecks, classifiers, experts, attribute head;
- added (M): params minus CLIP-ReID's (MoSAIC: K x 35 x 2 x 16 x D expert weights + the D x 35 + 35 head);
- trainable (M): what trains in the model's own stage: CLIP-ReID stage 2 (image tower, SIE, BNNeck weights,
  classifiers; ``train_image_encoder``), MoSAIC only its experts + attribute head;
- GFLOPs/img: ``torch.utils.flop_counter.FlopCounterMode`` over one eval forward of the batch, divided by the
  batch: matmuls, convolutions and attention at 2 FLOPs per multiply-add (norms, activations, softmax, pooling are
  not counted). PyTorch's fused multi-head-attention fast path is switched off while counting (its kernel hides
  the attention matmuls from the counter) and left at its default for the timing;
- images/s: eval forward to the test feature (``model(batch)``) under ``torch.inference_mode`` on one fixed batch
  (random 0-255 images, camera ids for SIE, valid random attribute vectors): ``--warmup`` untimed calls per row,
  then ``--repeats`` rounds that time one call of every row in turn (interleaved, so that drift of the machine hits
  all rows alike; ``time.perf_counter``, CUDA synchronised); the figure is the batch over the median seconds;
- x CLIP-ReID: images/s over CLIP-ReID's images/s of the same run.
On a machine that other processes load, give ``--threads`` at most the idle cores: torch's OpenMP workers
contending for busy cores slow small operators by up to 100x (the tiny CLIP) and make every row noisy.
The last line is ``mosaic model=<m> batch=<b> <row>_img_s=<x> <row>_ratio=<r> <row>_gflops=<g>
<row>_added_params=<n> ...`` with rows ``clipreid``, ``k<K>`` (oracle) and ``k<K>_predicted``.
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

import plugins  # noqa: F401  (host-compat patches + registrations)
from fastreid.modeling import build_model
from plugins.config import import_methods, setup_cfg
from plugins.mosaic.build import attribute_specs_of

CONFIG = "configs/mosaic/market.yml"
SIZES = {"tiny": (128, 64), "ViT-B-16": (256, 128)}
NUM_CAMERAS = 6  # Market-1501 (configs/mosaic/market.yml)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", "--name", dest="model", default="ViT-B-16", choices=sorted(SIZES),
                   help="CLIP image tower (MODEL.BACKBONE.CLIP.NAME)")
    p.add_argument("--ks", type=int, nargs="+", default=None,
                   help="MOSAIC.LAST_K values (default: 1 and the tower's depth, 12 for ViT-B-16, 4 for tiny)")
    p.add_argument("--batch", type=int, default=8, help="images per forward")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per row before timing")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only)")
    args = p.parse_args(argv)
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def build(args, meta_arch: str, last_k: int = 1):
    h, w = SIZES[args.model]
    opts = ["MODEL.DEVICE", args.device, "MODEL.META_ARCHITECTURE", meta_arch, "MODEL.BACKBONE.PRETRAIN", "False",
            "MODEL.BACKBONE.CLIP.NAME", args.model, "MODEL.BACKBONE.CLIP.NUM_CAMERAS", str(NUM_CAMERAS),
            "INPUT.SIZE_TRAIN", f"[{h}, {w}]", "INPUT.SIZE_TEST", f"[{h}, {w}]", "MODEL.HEADS.NUM_CLASSES", "751",
            "MOSAIC.LAST_K", str(last_k)]
    if args.model == "tiny":
        opts += ["MODEL.BACKBONE.CLIP.WEIGHTS", ""]
    torch.manual_seed(0)
    model = build_model(setup_cfg(CONFIG, opts))
    return model.train_image_encoder().eval()  # MoSAIC: experts + head trainable; CLIP-ReID: its stage 2


def random_attributes(specs, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, A) valid attribute vectors of a reader's ``attribute_specs``: one value per field, exactly one field
    marked per multi-field (colour) group."""
    v = torch.zeros(n, len(specs), dtype=torch.long)
    groups = defaultdict(list)
    for i, s in enumerate(specs):
        groups[s.group].append(i)
    for cols in groups.values():
        if len(cols) == 1:
            v[:, cols[0]] = torch.randint(len(specs[cols[0]].values), (n,), generator=generator)
        else:
            pick = torch.randint(len(cols), (n,), generator=generator)
            v[torch.arange(n), torch.tensor(cols)[pick]] = 1
    return v


def count_params(model):
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def gflops_per_image(call, batch_size: int) -> float:
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            call()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / batch_size / 1e9


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import_methods()
    device, amp = args.device, bool(args.amp and args.device.startswith("cuda"))
    h, w, b = *SIZES[args.model], args.batch

    base = build(args, "CLIPReID")
    depth = len(base.image_encoder.visual.transformer.resblocks)
    ks = sorted(set(args.ks)) if args.ks else sorted({1, depth})
    bad = [k for k in ks if not 1 <= k <= depth]
    if bad:
        raise ValueError(f"--ks {bad}: K (MOSAIC.LAST_K) must be in 1..{depth}, the blocks of the {args.model} "
                         f"image tower")
    models = {k: build(args, "MoSAIC", k) for k in ks}
    schema = models[ks[0]].schema

    g = torch.Generator().manual_seed(0)
    specs = attribute_specs_of(setup_cfg(CONFIG, []).DATASETS.NAMES[0])
    batch = {"images": (torch.rand(b, 3, h, w, generator=g) * 255).to(device),
             "camids": (torch.arange(b) % NUM_CAMERAS).to(device),
             "attributes": random_attributes(specs, b, g).to(device)}
    active = models[ks[0]].oracle_active(batch).sum(1).float().mean().item()

    # rows: (key, label, model, router mode or None)
    rows = [("clipreid", "CLIP-ReID", base, None)]
    rows += [(f"k{k}", f"MoSAIC K={k} (oracle)", models[k], "oracle") for k in ks]
    rows.append((f"k{ks[-1]}_predicted", f"MoSAIC K={ks[-1]} (predicted)", models[ks[-1]], "predicted"))

    def call(model, mode):
        if mode is not None:
            model.router_mode = mode
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            model(batch)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    flops = {key: gflops_per_image(lambda: call(m, mode), b) for key, _, m, mode in rows}
    for _ in range(args.warmup):
        for _, _, m, mode in rows:
            call(m, mode)
    seconds = defaultdict(list)
    for _ in range(args.repeats):
        for key, _, m, mode in rows:
            sync()
            start = time.perf_counter()
            call(m, mode)
            sync()
            seconds[key].append(time.perf_counter() - start)

    base_params, _ = count_params(base)
    result = {}
    for key, label, m, mode in rows:
        total, trainable = count_params(m)
        img_s = b / statistics.median(seconds[key])
        result[key] = {"label": label, "params": total, "trainable": trainable, "added_params": total - base_params,
                       "gflops": flops[key], "img_s": img_s}
    for r in result.values():
        r["ratio"] = r["img_s"] / result["clipreid"]["img_s"]

    table = [[r["label"], f"{r['params'] / 1e6:.3f}", f"{r['added_params'] / 1e6:.3f}", f"{r['trainable'] / 1e6:.3f}",
              f"{r['gflops']:.3f}", f"{r['img_s']:.2f}", f"{r['ratio']:.3f}"] for r in result.values()]
    print(f"MoSAIC vs CLIP-ReID, {args.model} at {h}x{w}, {schema.num_experts} experts (rank "
          f"{models[ks[0]].banks[0].rank}; {active:.1f} active per image on this batch), batch {b}, device {device}, "
          f"AMP {amp}, torch threads {torch.get_num_threads()}, warm-up {args.warmup}, median of {args.repeats}")
    print(tabulate(table, headers=["model", "params (M)", "added (M)", "trainable (M)", "GFLOPs/img", "images/s",
                                   "x CLIP-ReID"], tablefmt="github", disable_numparse=True,
                   colalign=("left",) + ("right",) * 6))
    print(f"mosaic model={args.model} batch={b} " + " ".join(
        f"{key}_img_s={r['img_s']:.2f} {key}_ratio={r['ratio']:.3f} {key}_gflops={r['gflops']:.3f} "
        f"{key}_added_params={r['added_params']}" for key, r in result.items()))
    return result


if __name__ == "__main__":
    main()
