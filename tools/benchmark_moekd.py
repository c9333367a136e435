#!/usr/bin/env python
"""MoE-KD's deployment promise, measured side by side in one run: the ResNet-18 student vs the teacher mixture vs
each frozen expert alone; parameters, FLOPs per image, images/s at batch 1 and 32, peak memory of a forward, and
what top-1 sparse inference saves.

    python tools/benchmark_moekd.py [--scale paper|demo] [--iters 3] [--batches 1 32] [--device cpu|cuda]

``--scale paper``: CLIP ViT-B/16 (open_clip, QuickGELU) and ALIGN-base's image tower (AlignVisionModel(
AlignVisionConfig()), 640-d pooled) at 256x256, adapters to 2048, gate 4096 -> 512 -> 256 -> 2, student ResNet-18
+ FC(512 -> 2048) + BN + ReLU. ``--scale demo``: configs/moekd/demo.yml's models (tiny CLIP, small ALIGN, 64x32).
Random weights (speed and FLOPs do not depend on the values). Rows (eval mode, ``torch.inference_mode``):
- student: the deployed student (no classifier);
- teacher (paper gate): both experts on every image, gate on the 4096-d concatenation, top-1 weights (the gate
  needs both experts' features, so top-1 saves nothing here);
- teacher (image gate, sparse top-1): the gate reads a small stem on the image, the batch is grouped by the
  gate's choice and each expert runs on its group only (images routed to each expert are printed);
- teacher (image gate, dense): the same model running both experts on every image (the saving's reference);
- CLIP expert / ALIGN expert alone (frozen tower, no adapter).
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 2 FLOPs) on a batch of 8, per image. Peak
memory: CUDA ``max_memory_allocated`` (weights + activations); on CPU the weights plus the peak of live tensors
allocated during the forward (profiler memory events at batch 32). The last line is
``moekd student_params=<n> teacher_params=<m> speedup_student_vs_teacher=<x>`` (images/s at batch 32, the
paper-gate teacher).
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict

import torch
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

import plugins  # noqa: F401  (host-compat patches + registrations)
from fastreid.modeling import build_model
from plugins.config import import_methods, setup_cfg
from plugins.timing import seconds_per_call

PAPER = ["MODEL.BACKBONE.CLIP.NAME", "ViT-B-16", "MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",
         "INPUT.SIZE_TRAIN", "[256, 256]", "INPUT.SIZE_TEST", "[256, 256]"]
DEMO = ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", default="paper", choices=("paper", "demo"))
    p.add_argument("--iters", type=int, default=3, help="timed forwards per row and batch (after one warm-up)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def build(scale: str, device: str, *opts) -> torch.nn.Module:
    config = "configs/moekd/base.yml" if scale == "paper" else "configs/moekd/demo.yml"
    cfg = setup_cfg(config, [*(PAPER if scale == "paper" else DEMO), "MODEL.DEVICE", device, *opts])
    torch.manual_seed(0)
    return build_model(cfg).eval().to(device)


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def weight_bytes(m: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def images_per_second(fn: Callable, images: torch.Tensor, iters: int, device: str) -> float:
    with torch.inference_mode():
        return images.shape[0] / seconds_per_call(lambda: fn(images), iters, device)


def flops_per_image(fn: Callable, images: torch.Tensor) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(images)
    return counter.get_total_flops() / images.shape[0]


def peak_bytes(fn: Callable, images: torch.Tensor, weights: int, device: str) -> int:
    """Weights + the peak of memory allocated during one forward."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            fn(images)
        return int(torch.cuda.max_memory_allocated())
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(images)
    live = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += ev.cpu_memory_usage if not ev.cpu_children else 0  # allocations / frees of leaf ops only
        peak = max(peak, live)
    return weights + peak


def cache_step_seconds(teacher, h: int, w: int, device: str, iters: int):
    """Seconds per teacher training step (batch 32 = 8 ids x 4) with live experts vs with cached outputs."""
    from fastreid.utils.events import EventStorage

    teacher.train()
    batch = {"images": torch.rand(32, 3, h, w, device=device) * 255,
             "targets": torch.arange(8, device=device).repeat_interleave(4)}
    with torch.no_grad():
        outs = teacher.mixture.run_experts(batch["images"])
    opt = torch.optim.Adam([p for p in teacher.parameters() if p.requires_grad], lr=3e-4)

    def step(cached):
        with EventStorage():
            loss = sum(teacher.losses_of(batch, cached).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds = [seconds_per_call(lambda cached=cached: step(cached), iters, device) for cached in (None, outs)]
    teacher.eval()
    return seconds[0], seconds[1]


def main(argv=None) -> Dict[str, Dict]:
    args = parse_args(argv)
    import_methods()
    dev = args.device
    student = build(args.scale, dev, "MODEL.META_ARCHITECTURE", "MoEKDStudent")
    # with VeRi-776's 576 training identities (the classifier is training-only: excluded from the counts below)
    paper_teacher = build(args.scale, dev, "MODEL.META_ARCHITECTURE", "MoEKDTeacher", "MODEL.HEADS.NUM_CLASSES", "576")
    image_teacher = build(args.scale, dev, "MODEL.META_ARCHITECTURE", "MoEKDTeacher", "MOEKD.GATE.INPUT", "image")
    cfg = setup_cfg("configs/moekd/base.yml" if args.scale == "paper" else "configs/moekd/demo.yml",
                    PAPER if args.scale == "paper" else DEMO)
    h, w = (int(v) for v in cfg.INPUT.SIZE_TEST)
    mix_img = image_teacher.mixture
    # route about half of the images to each expert (a random-init gate may send all to one): bias the last layer
    # by the median logit difference over a probe batch, so the sparse row measures a 50/50 split
    probe = torch.rand(32, 3, h, w, device=dev) * 255
    with torch.inference_mode():
        logits = mix_img.gate.mlp(mix_img.gate_stem(mix_img.normalise(probe)))
        diff = (logits[:, 0] - logits[:, 1]).median()
        mix_img.gate.mlp[-1].bias[1] += diff

    def sparse(x):
        mix_img.sparse = True
        return mix_img(x)

    def dense_image(x):
        mix_img.sparse = False
        return mix_img(x)

    experts = paper_teacher.mixture.experts
    rows = {
        "student (ResNet-18 + proj)": (lambda x: student({"images": x}), student.num_deployed_parameters(),
                                       weight_bytes(student)),
        "teacher (paper gate, both experts)": (lambda x: paper_teacher({"images": x}),
                                               paper_teacher.mixture.num_parameters()
                                               + params(paper_teacher.bottleneck),
                                               weight_bytes(paper_teacher) + sum(weight_bytes(e.module)
                                                                                 for e in experts.values())),
        "teacher (image gate, sparse top-1)": (sparse, mix_img.num_parameters(),
                                               weight_bytes(image_teacher) + sum(weight_bytes(e.module) for e in
                                                                                 mix_img.experts.values())),
        "teacher (image gate, dense)": (dense_image, mix_img.num_parameters(),
                                        weight_bytes(image_teacher) + sum(weight_bytes(e.module) for e in
                                                                          mix_img.experts.values())),
        "CLIP expert alone": (lambda x: experts["clip"](x), experts["clip"].num_parameters(),
                              weight_bytes(experts["clip"].module)),
        "ALIGN expert alone": (lambda x: experts["align"](x), experts["align"].num_parameters(),
                               weight_bytes(experts["align"].module)),
    }
    table, out = [], {}
    for name, (fn, n_params, wbytes) in rows.items():
        res = {"params": n_params, "GFLOPs/img": flops_per_image(fn, torch.rand(8, 3, h, w, device=dev) * 255) / 1e9}
        for b in args.batches:
            res[f"img/s @{b}"] = images_per_second(fn, torch.rand(b, 3, h, w, device=dev) * 255, args.iters, dev)
        res["peak MB @32"] = peak_bytes(fn, torch.rand(32, 3, h, w, device=dev) * 255, wbytes, dev) / 2 ** 20
        out[name] = res
        table.append([name, f"{n_params / 1e6:.2f}M", f"{res['GFLOPs/img']:.3f}"]
                     + [f"{res[f'img/s @{b}']:.2f}" for b in args.batches] + [f"{res['peak MB @32']:.0f}"])
        print(f"  measured {name}", flush=True)
    with torch.inference_mode():
        mix_img.sparse = True
        routed = mix_img(probe).ran
    print(f"\nMoE-KD benchmark, scale {args.scale}, input {h}x{w}, device {dev} "
          f"({torch.get_num_threads()} threads), {args.iters} timed forwards per cell")
    print(tabulate(table, headers=["model", "params", "GFLOPs/img", *[f"img/s @{b}" for b in args.batches],
                                   "peak MB @32"], tablefmt="github"))
    big = max(args.batches)
    s, d = out["teacher (image gate, sparse top-1)"], out["teacher (image gate, dense)"]
    print(f"top-1 sparse inference (image gate, probe batch routed {routed}): "
          f"{d['GFLOPs/img'] / s['GFLOPs/img']:.2f}x fewer FLOPs, {s[f'img/s @{big}'] / d[f'img/s @{big}']:.2f}x "
          f"images/s at batch {big} vs running both experts; the paper gate needs both experts (no saving)")
    live, cached = cache_step_seconds(paper_teacher, h, w, dev, args.iters)
    print(f"teacher training step at batch 32 (forward + backward + Adam): live experts {live:.3f} s, cached expert "
          f"outputs {cached:.4f} s -> the feature cache speeds teacher training up {live / cached:.0f}x per step")
    st, te = out["student (ResNet-18 + proj)"], out["teacher (paper gate, both experts)"]
    speedup = st[f"img/s @{big}"] / te[f"img/s @{big}"]
    print(f"moekd student_params={st['params']} teacher_params={te['params']} speedup_student_vs_teacher={speedup:.2f}")
    return out


if __name__ == "__main__":
    main()
