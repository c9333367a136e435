#!/usr/bin/env python
"""Export a trained model's image encoder to ONNX (dynamic batch) and check it against torch with onnxruntime.

    python tools/export_onnx.py --config-file CFG --weights W --output model.onnx [--images DIR] [KEY VALUE ...]

The model is built and loaded as ``tools/retrieve.py`` and ``--eval-only`` do (``plugins.inference.Predictor``).
Parity: the max abs difference of the L2-normalised features of torch and onnxruntime on real images
(``--images``: a folder, default the query set of the first ``DATASETS.TESTS``), read with the config's test
transforms; it must stay below ``--tolerance`` (1e-4) or the tool exits with status 1. A model that cannot be
exported fails naming the operator. The last line printed is ``onnx parity max_abs=<x>``.
"""
import argparse
import sys

import torch

import plugins  # noqa: F401  (host-compat patches + registrations)
from plugins.config import import_methods, setup_cfg
from plugins.engine.loaders import dataset_items, make_test_loader
from plugins.inference.export import export_image_encoder, parity
from plugins.inference.gallery_index import list_image_items
from plugins.inference.predictor import Predictor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default=None, help="checkpoint; default MODEL.WEIGHTS")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--images", default=None, help="folder of real images for the parity check")
    p.add_argument("--num-images", type=int, default=16, help="images in the parity check")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def parity_batch(predictor: Predictor, folder, num: int) -> dict:
    """Up to ``num`` real images (with their camera ids) through the config's test transforms, as one batch."""
    if folder:
        items = list_image_items(folder)
    else:
        items = dataset_items([predictor.cfg.DATASETS.TESTS[0]], "query")
    items = [(it[0], 0, int(it[2]) if not isinstance(it[2], str) else 0) for it in items[:num]]
    loader, _ = make_test_loader(predictor.image_cfg(), items, batch_size=len(items), num_workers=0)
    return next(iter(loader))


def main(argv=None) -> float:
    args = parse_args(argv)
    import_methods()
    cfg = setup_cfg(args.config_file, args.opts)
    predictor = Predictor(cfg, args.weights, device="cpu")
    batch = parity_batch(predictor, args.images, args.num_images)
    images, camids = batch["images"].float(), torch.as_tensor(batch["camids"]).long()
    wrapper = export_image_encoder(predictor.model, args.output, images[:2], flip=predictor.flip)
    print(f"exported {cfg.MODEL.META_ARCHITECTURE} image encoder to {args.output} "
          f"(inputs: images{' + camids' if wrapper.with_camids else ''}, dynamic batch)")
    max_abs = parity(wrapper, args.output, images, camids)
    print(f"onnx parity max_abs={max_abs:.3e}")
    if not max_abs < args.tolerance:
        print(f"parity {max_abs:.3e} exceeds the tolerance {args.tolerance:g}", file=sys.stderr)
        sys.exit(1)
    return max_abs


if __name__ == "__main__":
    main(sys.argv[1:])
