#!/usr/bin/env python
"""Throughput of CLIP-ReID on the project's open_clip towers, and what stage 1's feature cache saves.

    python tools/benchmark_clip.py --model tiny|ViT-B-16 [--batch 32] [--iters 5] [--ids 751] [--device cpu|cuda]
        [--amp]

Rows, all measured in this run on random weights (speed does not depend on the values):
- stage-2 train step (images/s): forward + the three losses + backward + Adam step of the CLIPReID model, batch of
  ``--batch`` images (P x 4), SIE on;
- feature extraction (images/s): eval forward to the test feature, ``torch.inference_mode``;
- stage-1 step with cached image features vs recomputing them (s/step): the cached step runs only the text tower
  on the batch's prompts + SupCon; without the cache every step also runs the frozen image tower. The ratio is the
  speed-up of one stage-1 epoch (the one-off extraction of the features is the feature-extraction row).
The last line is ``clip model=<m> train_img_s=<x> extract_img_s=<y> stage1_cache_speedup=<z>``.
"""
import argparse

import torch
from tabulate import tabulate

import plugins  # noqa: F401  (host-compat patches + registrations)
from plugins.timing import seconds_per_call
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from plugins.config import import_methods, setup_cfg
from plugins.modeling.losses import supervised_contrastive_loss

SIZES = {"tiny": (128, 64), "ViT-B-16": (256, 128)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=32, help="images per step (multiple of 4)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per row (after one warm-up)")
    p.add_argument("--ids", type=int, default=751, help="identities (classifier rows, prompts)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.batch % 4:
        raise ValueError(f"--batch must be a multiple of 4 (P ids x 4 images), got {args.batch}")
    import_methods()
    h, w = SIZES[args.model]
    cfg = setup_cfg("configs/clipreid/market.yml", [
        "MODEL.DEVICE", args.device, "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.CLIP.NAME", args.model,
        "MODEL.BACKBONE.CLIP.NUM_CAMERAS", "6", "INPUT.SIZE_TRAIN", f"[{h}, {w}]", "INPUT.SIZE_TEST", f"[{h}, {w}]",
        "MODEL.HEADS.NUM_CLASSES", str(args.ids)])
    torch.manual_seed(0)
    model = build_model(cfg).train_image_encoder()
    model.set_text_features(torch.randn(args.ids, model.image_encoder.embed_dim))
    device, amp = args.device, bool(args.amp and args.device.startswith("cuda"))
    autocast = lambda: torch.autocast("cuda", dtype=torch.float16, enabled=amp)  # noqa: E731
    b = args.batch
    images = torch.rand(b, 3, h, w, device=device) * 255
    targets = (torch.arange(b, device=device) // 4) % args.ids
    batch = {"images": images, "targets": targets, "camids": torch.arange(b, device=device) % 6}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def train_step():
        model.train()
        with autocast(), EventStorage():
            loss = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def extract():
        model.eval()
        with torch.inference_mode(), autocast():
            model(batch)

    t_train = seconds_per_call(train_step, args.iters, device)
    t_extract = seconds_per_call(extract, args.iters, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        train_step()
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GB (train step)"
    else:
        peak = "n/a on CPU"

    model.train_prompts_only()
    prompt_opt = torch.optim.Adam([model.prompt_learner.cls_ctx], lr=3.5e-4)
    with torch.no_grad(), autocast():
        cached = model.prompt_image_features(images).float()

    def stage1_step(image_features):
        with autocast():
            text = model.prompt_text_features(targets).float()
        loss = (supervised_contrastive_loss(image_features, text, targets, targets)
                + supervised_contrastive_loss(text, image_features, targets, targets))
        prompt_opt.zero_grad(set_to_none=True)
        loss.backward()
        prompt_opt.step()

    def uncached_step():
        with torch.no_grad(), autocast():
            features = model.prompt_image_features(images).float()
        stage1_step(features)

    t_cached = seconds_per_call(lambda: stage1_step(cached), args.iters, device)
    t_uncached = seconds_per_call(uncached_step, args.iters, device)
    rows = [["stage-2 train step", f"{b / t_train:.2f} images/s", f"{t_train:.3f} s/step"],
            ["feature extraction", f"{b / t_extract:.2f} images/s", f"{t_extract:.3f} s/batch"],
            ["stage-1 step, cached image features", f"{b / t_cached:.2f} images/s", f"{t_cached:.4f} s/step"],
            ["stage-1 step, image tower every step", f"{b / t_uncached:.2f} images/s", f"{t_uncached:.4f} s/step"]]
    print(f"CLIP-ReID {args.model} at {h}x{w}, batch {b}, {args.ids} ids, device {device}, AMP {amp}, "
          f"torch threads {torch.get_num_threads()}, peak memory {peak}")
    print(tabulate(rows, headers=["what", "throughput", "time"], tablefmt="github"))
    result = {"train_img_s": b / t_train, "extract_img_s": b / t_extract, "stage1_cache_speedup": t_uncached / t_cached}
    print(f"clip model={args.model} train_img_s={result['train_img_s']:.2f} "
          f"extract_img_s={result['extract_img_s']:.2f} stage1_cache_speedup={result['stage1_cache_speedup']:.2f}")
    return result


if __name__ == "__main__":
    main()
