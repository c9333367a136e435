#!/usr/bin/env python
"""DM-Adapter throughput and cost, random weights (speed does not depend on them):

- training: (image, caption) pairs/s of full steps (forward both towers, SDM + aux, backward, Adam step);
- retrieval: captions/s against a gallery of N images (caption features + cosine ranking of the whole gallery,
  gallery features computed once beforehand), and the gallery's images/s;
- cost of the SMA over the plain frozen CLIP: FLOPs of one image / one caption (torch FlopCounterMode, multiply-adds
  x 2), parameters, images/s of the image tower with and without SMA.

    python tools/benchmark_dmadapter.py [--models tiny vitb16] [--device cpu|cuda] [--train-batch 8]
        [--gallery 1000] [--captions 256] [--repeats 3]

One line per measurement: ``bench model=<m> what=<w> value=<v> unit=<u>``.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import plugins  # noqa: F401
from plugins.timing import seconds_per_call
from plugins.config import import_methods, setup_cfg

MODELS = {"tiny": ("tiny", [128, 64]), "vitb16": ("ViT-B-16", [384, 128])}


def _cfg(model: str, device: str, *extra):
    name, size = MODELS[model]
    return setup_cfg("", ["MODEL.META_ARCHITECTURE", "DMAdapter", "MODEL.DEVICE", device, "MODEL.BACKBONE.CLIP.NAME",
                          name, "MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",
                          "INPUT.SIZE_TRAIN", str(size), "INPUT.SIZE_TEST", str(size), *extra])


def _captions(n: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[:, 1:31] = torch.randint(1, 49405, (n, 30), generator=g)  # ~30 tokens: a CUHK-PEDES-length caption
    tokens[:, 31] = 49407
    return tokens.to(device)


def report(model: str, what: str, value: float, unit: str) -> None:
    print(f"bench model={model} what={what} value={value:.4g} unit={unit}", flush=True)


def bench(model_name: str, args) -> None:
    from fastreid.modeling import build_model

    from plugins.dmadapter.trainer import DMAdapterTrainer

    dev = args.device
    cfg = _cfg(model_name, dev)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    h, w = MODELS[model_name][1]
    report(model_name, "params_total", sum(p.numel() for p in model.parameters()), "params")
    report(model_name, "params_sma_trainable", sum(p.numel() for p in model.parameters() if p.requires_grad),
           "params")

    # training step
    b = args.train_batch
    batch = {"images": torch.rand(b, 3, h, w, device=dev) * 255, "text_tokens": _captions(b, dev),
             "targets": torch.arange(b, device=dev) // 2}
    opt, _ = DMAdapterTrainer.build_optimizer(cfg, model)
    model.train()

    def step():
        losses = model(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    report(model_name, f"train_pairs_per_s(batch={b})", b / seconds_per_call(step, args.repeats, dev), "pairs/s")

    # retrieval
    model.eval()
    n_gal, n_cap = args.gallery, args.captions
    img_batch = torch.rand(min(n_gal, args.image_batch), 3, h, w, device=dev) * 255
    with torch.no_grad():
        t_img = seconds_per_call(lambda: model({"images": img_batch}), max(1, args.repeats // 2), dev)
        report(model_name, "gallery_images_per_s", img_batch.shape[0] / t_img, "images/s")
        gallery = torch.nn.functional.normalize(torch.randn(n_gal, model.image_encoder.embed_dim, device=dev), dim=1)
        tokens = _captions(n_cap, dev)

        def retrieve():
            for s in range(0, n_cap, 128):
                q = torch.nn.functional.normalize(model({"text_tokens": tokens[s:s + 128]}), dim=1)
                (q @ gallery.t()).topk(min(10, n_gal), dim=1)

        report(model_name, f"retrieval_captions_per_s(gallery={n_gal})", n_cap / seconds_per_call(retrieve, 1, dev),
               "captions/s")

        # cost of the SMA over the plain CLIP (the same towers from open_clip, no SMA)
        from plugins.modeling.backbones.clip import build_clip_model
        from plugins.modeling.backbones.clip.tiny import TINY_CLIP_CONFIG

        spec = TINY_CLIP_CONFIG if model_name == "tiny" else MODELS[model_name][0]
        clip = build_clip_model(spec, image_size=(h, w)).to(dev).eval()
        one_img, one_cap = img_batch[:1], tokens[:1]
        length = int(one_cap.argmax(-1).max()) + 1  # ours runs max(EOT) + 1 positions at eval: compare alike
        runs = {"dmadapter": (lambda: model({"images": one_img}), lambda: model({"text_tokens": one_cap}),
                              lambda: model({"images": img_batch}), model),
                "plain_clip": (lambda: clip.encode_image(one_img / 255),
                               lambda: _plain_text(clip, one_cap[:, :length]),
                               lambda: clip.encode_image(img_batch / 255), clip)}
        for label, (img_fn, txt_fn, many, m) in runs.items():
            for what, fn in (("image", img_fn), ("caption", txt_fn)):
                with FlopCounterMode(display=False) as fc:
                    fn()
                report(model_name, f"flops_per_{what}({label})", fc.get_total_flops(), "FLOP")
            report(model_name, f"params({label})", sum(p.numel() for p in m.parameters()), "params")
            report(model_name, f"image_tower_images_per_s({label})",
                   img_batch.shape[0] / seconds_per_call(many, max(1, args.repeats // 2), dev), "images/s")


def _plain_text(clip, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower on the first L positions (causal: the EOT feature is unchanged)."""
    n = tokens.shape[1]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:n]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ clip.text_projection


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "vitb16"], choices=sorted(MODELS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--gallery", type=int, default=1000)
    p.add_argument("--captions", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-batch", type=int, default=64, help="images per batch of the image-tower timings")
    args = p.parse_args(argv)
    import_methods()
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for m in args.models:
        bench(m, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
