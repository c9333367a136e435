#!/usr/bin/env python
"""Cost of SAGE's merged model vs. its alternatives on ViT-B/16 at 256x128 (sage.md, Table 9).

    python tools/benchmark_sage.py --experts 3 [--batch 2] [--rank 8] [--iters 3] [--rounds 3]
        [--num-classes 1990] [--step-batch 16]

Rows: plain ViT, a static merge folded into the base weights (LoRA-Avg here; TA / TIES / DARE / KnOTS / TSV-M /
LoRAHub fold the same way), one LoRA expert, LoRA-Avg / SAGE / MoLE merged (one forward with all K low-rank
branches, residuals kept factored), and the K experts run separately (K forward passes, features averaged).
``--step-batch B`` also measures the peak memory of one stage-2 training step (forward + backward, gates
trainable) at K and at K=1, each in a fresh process (peak RSS above the RSS after building the model on CPU, the
high-water mark reset after the build;
``max_memory_allocated`` on CUDA). Every model is backbone + BNNeck + a
bias-free classifier over ``--num-classes`` (the paper's totals include ~1,990 target pseudo-classes).
Parameters and FLOPs (2 x multiply-adds, ``torch.utils.flop_counter.FlopCounterMode``; element-wise ops are
not counted) are measured on meta tensors, so they cost no memory; timing runs real tensors (``--device``):
every model is built first, then timed in ``--rounds`` interleaved rounds and its median kept, so the ratios
against the plain ViT compare models measured under the same machine load.
GFLOPs/img is counted at batch 1 (the paper's convention) and again at ``--batch``: the factored gates project
their weights through the experts once per forward (SAGE: ``B_k^T w``, N d_out K r multiply-adds per layer,
whatever the batch), so their per-image cost falls with the batch while a dense gate's would not.
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the weight memory is shown instead.
Models above ``--max-timed-params`` parameters are not timed (MoLE at K=10 holds 1.07 G gate parameters).
"""
import argparse
import statistics
from typing import Dict, List, Optional

import torch
from tabulate import tabulate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import plugins  # noqa: F401  (host-compat patches + registrations)
from plugins.timing import seconds_per_call
from plugins.modeling.backbones.timm_vit import TimmViTBackbone
from plugins.sage.gated_model import build_gated_vit, gate_parameters
from plugins.tuners.inject import inject_lora, lora_factors_from_peft, remove_peft_layers

# sage.md / paper Table 9 (ViT-B/16, 256x128, r=8): (GFLOPs/img, params M); reference only, for the comparison.
PAPER = {(3, "LoRA-Avg"): (23.64, 90.82), (3, "MoLE"): (23.86, 187.12), (3, "SAGE"): (23.67, 101.52),
         (10, "LoRA-Avg"): (25.85, 99.08), (10, "MoLE"): (28.09, 1169.06), (10, "SAGE"): (25.95, 109.78)}
IMG = (256, 128)


class ReidModel(nn.Module):
    """Backbone CLS -> BNNeck -> bias-free classifier, as fast-reid's EmbeddingHead at train time."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.bnneck = nn.BatchNorm1d(backbone.num_features)
        self.classifier = nn.Linear(backbone.num_features, num_classes, bias=False)

    def forward(self, x):
        return self.classifier(self.bnneck(self.backbone(x).flatten(1)))


class SeparateExperts(nn.Module):
    """K single-expert models run one after the other (one shared frozen backbone, adapter switched)."""

    def __init__(self, model: nn.Module, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, x):
        from peft.tuners.lora import LoraLayer

        outs = []
        for name in self.names:
            for m in self.model.modules():
                if isinstance(m, LoraLayer):
                    m.set_adapter(name)
            outs.append(self.model(x))
        return torch.stack(outs).mean(0)


def build(kind: str, k: int, rank: int, num_classes: int, device) -> nn.Module:
    with torch.device(device):
        model = ReidModel(TimmViTBackbone(model_name="vit_base_patch16_224", img_size=IMG), num_classes)
        vit = model.backbone.vit
        if kind == "plain":
            return model.eval()
        if kind.startswith("folded"):
            return fold_average(model, k, rank, device).eval()
        n_adapters = 1 if kind == "single expert" else k
        for i in range(n_adapters):
            inject_lora(vit, rank=rank, alpha=4.0 * rank, adapter_name=f"e{i}")
        if device != "meta":
            for n, p in vit.named_parameters():
                if "lora_B" in n:
                    nn.init.normal_(p, std=0.01)  # non-zero experts, as after training
        if kind == "single expert":
            return model.eval()
        if kind.startswith("separate"):
            return SeparateExperts(model, [f"e{i}" for i in range(k)]).eval()
        experts = [lora_factors_from_peft(vit, f"e{i}") for i in range(k)]
        remove_peft_layers(vit)
        gate = {"LoRA-Avg": "avg", "SAGE": "sage", "MoLE": "mole"}[kind]
        build_gated_vit(vit, experts=experts, gate=gate, num_tokens=vit.pos_embed.shape[1])
        return model.eval()


def fold_average(model: "ReidModel", k: int, rank: int, device) -> "ReidModel":
    """K random experts averaged and folded into the weights (W += mean_k s B_k A_k): plain nn.Linear layers."""
    vit = model.backbone.vit
    for i in range(k):
        inject_lora(vit, rank=rank, alpha=4.0 * rank, adapter_name=f"e{i}")
        if device != "meta":
            for n, p in vit.named_parameters():
                if "lora_B" in n and f".e{i}." in n:
                    nn.init.normal_(p, std=0.01)
    experts = [lora_factors_from_peft(vit, f"e{i}") for i in range(k)]
    remove_peft_layers(vit)
    if device != "meta":
        with torch.no_grad():
            for name in experts[0]:
                layer = vit.get_submodule(name)
                layer.weight += sum(s * b @ a for a, b, s in (e[name] for e in experts)) / k
    return model


def _proc_status_kib(field: str) -> Optional[int]:
    """A ``/proc/self/status`` field in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0: ``clear_refs`` 5); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kib("VmHWM") is not None
    except OSError:
        return False


def step_peak_mib(kind: str, k: int, rank: int, num_classes: int, batch: int, device: str) -> float:
    """Peak memory (MiB) of one stage-2 training step of ``kind`` above the memory held once the model is built.

    CPU: the RSS high-water mark is reset after the build (building may peak higher than the step: temporary
    copies of the weights), then read after the step; without that reset ``ru_maxrss`` can only show the growth
    beyond the build's peak. CUDA: ``max_memory_allocated``."""
    import resource

    model = build(kind, k, rank, num_classes, device).train()
    for n, p in model.named_parameters():
        p.requires_grad_(".gate." in n or n.startswith("classifier"))
    x = torch.rand(batch, 3, *IMG, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    elif _reset_peak_rss():
        before = _proc_status_kib("VmRSS") * 1024
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak so far: building the model
    model(x).logsumexp(1).mean().backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    peak = _proc_status_kib("VmHWM")
    peak = peak * 1024 if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - before) / 2 ** 20


def step_peak_in_fresh_process(k: int, args) -> float:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--experts", str(k), "--rank", str(args.rank), "--num-classes",
                          str(args.num_classes), "--device", args.device, "--threads", str(args.threads),
                          "--step-batch", str(args.step_batch), "--_step-only"],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def count_flops(model: nn.Module, batch: int = 1) -> int:
    """FLOPs of one forward of ``batch`` images (meta tensors: nothing is computed)."""
    x = torch.empty(batch, 3, *IMG, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def time_models(models: Dict[str, nn.Module], batch: int, iters: int, rounds: int, device: str) -> Dict[str, float]:
    """images/s of each model: the median over ``rounds`` rounds, each timing every model for ``iters`` forwards
    in turn (interleaved, so a change of machine load during the run hits every model alike; the order rotates
    from round to round)."""
    x = torch.rand(batch, 3, *IMG, device=device)
    seconds: Dict[str, List[float]] = {name: [] for name in models}
    names = list(models)
    with torch.no_grad():
        for i in range(rounds):
            # each round starts one model later, so no model always runs first (after the previous round's last,
            # largest model has filled the caches) or always after the same neighbour
            for name in names[i % len(names):] + names[:i % len(names)]:
                model = models[name]
                seconds[name].append(seconds_per_call(lambda: model(x), iters, device))
    return {name: batch / statistics.median(s) for name, s in seconds.items()}


def cuda_peak_mib(model: nn.Module, batch: int, device: str) -> Optional[float]:
    """Peak CUDA memory (MiB) of one inference forward; None off CUDA."""
    if not device.startswith("cuda"):
        return None
    x = torch.rand(batch, 3, *IMG, device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(x)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, required=True, help="K, number of LoRA experts")
    ap.add_argument("--batch", type=int, default=2, help="images per timed forward")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank r (alpha = 4r, as r=8/alpha=32)")
    ap.add_argument("--iters", type=int, default=3, help="timed forwards per model per round (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of interleaved timing; images/s is the median over rounds")
    ap.add_argument("--num-classes", type=int, default=1990, help="classifier classes (target pseudo-ids)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0: torch default)")
    ap.add_argument("--max-timed-params", type=float, default=400e6, help="do not time bigger models")
    ap.add_argument("--step-batch", type=int, default=0,
                    help="also measure one SAGE stage-2 training step at this batch, at K and K=1 (0: skip)")
    ap.add_argument("--_step-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.experts < 1:
        ap.error("--experts must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    k = args.experts
    if args._step_only:
        import json

        print(json.dumps({"peak_mib": step_peak_mib("SAGE", k, args.rank, args.num_classes, args.step_batch,
                                                    args.device)}))
        return
    kinds = ["plain", "folded merge (LoRA-Avg)", "single expert", "LoRA-Avg", "SAGE", f"separate ({k} passes)",
             "MoLE"]
    rows, stats, timed = [], {}, {}
    for kind in kinds:
        meta = build(kind, k, args.rank, args.num_classes, "meta")
        params = sum(p.numel() for p in meta.parameters())
        stats[kind] = dict(params=params, flops=count_flops(meta),
                           flops_batched=count_flops(meta, args.batch) / args.batch,
                           gate=gate_parameters(meta)["weight"],
                           weight_mib=sum(p.numel() * 4 for p in meta.parameters()) / 2 ** 20, ips=None, peak=None)
        del meta
        if params <= args.max_timed_params:
            timed[kind] = build(kind, k, args.rank, args.num_classes, args.device)
            stats[kind]["peak"] = cuda_peak_mib(timed[kind], args.batch, args.device)
    for kind, ips in time_models(timed, args.batch, args.iters, args.rounds, args.device).items():
        stats[kind]["ips"] = ips
    timed.clear()
    for kind in kinds:
        st, ref = stats[kind], PAPER.get((k, kind))
        rows.append([kind, f"{st['params'] / 1e6:.2f}", f"{st['gate']:,}", f"{st['flops'] / 1e9:.3f}",
                     f"{st['flops_batched'] / 1e9:.3f}",
                     f"{ref[0]:.2f} ({100 * (st['flops'] / 1e9 - ref[0]) / ref[0]:+.2f}%)" if ref else "-",
                     f"{ref[1]:.2f}" if ref else "-",
                     f"{st['peak']:.0f}" if st["peak"] is not None else f"weights {st['weight_mib']:.0f}",
                     f"{st['ips']:.2f}" if st["ips"] is not None else "not timed (size)"])
    print(f"ViT-B/16 {IMG[0]}x{IMG[1]}, K={k}, r={args.rank}, classes={args.num_classes}, device={args.device}, "
          f"batch={args.batch}, iters={args.iters} x {args.rounds} interleaved rounds (median), threads={torch.get_num_threads()}")
    print(tabulate(rows, headers=["model", "params (M)", "gate params", "GFLOPs/img", f"at batch {args.batch}",
                                  "paper GFLOPs (diff)",
                                  "paper params (M)", "peak mem (MiB)", "images/s"]))
    avg = stats["LoRA-Avg"]
    deltas = [[kind, f"{(stats[kind]['params'] - avg['params']) / 1e6:.2f}",
               f"{(PAPER[(k, kind)][1] - PAPER[(k, 'LoRA-Avg')][1]):.2f}" if (k, kind) in PAPER else "-",
               f"{(stats[kind]['flops'] - avg['flops']) / 1e9:.3f}",
               f"{(PAPER[(k, kind)][0] - PAPER[(k, 'LoRA-Avg')][0]):.2f}" if (k, kind) in PAPER else "-"]
              for kind in ("SAGE", "MoLE")]
    print(tabulate(deltas, headers=["vs LoRA-Avg", "d params (M)", "paper", "d GFLOPs", "paper"]))
    sage, sep, plain = stats["SAGE"], stats[f"separate ({k} passes)"], stats["plain"]

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "nan"

    print(tabulate([[kind, ratio(stats[kind]["ips"], plain["ips"])] for kind in kinds],
                   headers=["images/s vs plain ViT (same run)", "ratio"]))
    tail = ""
    if args.step_batch:
        peak_k, peak_1 = step_peak_in_fresh_process(k, args), step_peak_in_fresh_process(1, args)
        print(f"stage-2 step (SAGE, batch {args.step_batch}, gates + classifier trainable): peak memory "
              f"{peak_k:.0f} MiB at K={k}, {peak_1:.0f} MiB at K=1")
        tail = f" step_mem_vs_k1={peak_k / peak_1:.2f}" if peak_1 > 0 else " step_mem_vs_k1=nan"
    print(f"sage K={k} gate_params={sage['gate']} mole_gate_params={stats['MoLE']['gate']} "
          f"merged_vs_separate_speedup={ratio(sage['ips'], sep['ips'])} sage_vs_plain={ratio(sage['ips'], plain['ips'])}"
          f"{tail}")


if __name__ == "__main__":
    main()
