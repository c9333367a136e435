"""Measurements of the tiny CLIP: text->image R@1 on the procedural test split, and the frozen image tower's ReID
mAP on a Market-format procedural domain. Both go through the project's exact evaluator
(``plugins.evaluation.evaluate_features``); no training, no config."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from .text_encoder import CLIPTextEncoder

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "normalise", "text_to_image_recall", "image_features", "reid_map_of"]

# The tiny CLIP's input normalisation, on [0, 1] RGB (x 255 for fast-reid's PIXEL_MEAN / PIXEL_STD: 127.5).
PIXEL_MEAN: Tuple[float, float, float] = (0.5, 0.5, 0.5)
PIXEL_STD: Tuple[float, float, float] = (0.5, 0.5, 0.5)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> float, ``(x / 255 - mean) / std`` with the tiny CLIP's mean / std."""
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (images_u8.float() / 255.0 - mean) / std


@torch.no_grad()
def text_to_image_recall(model, data, *, split: str = "test", batch_size: int = 256) -> Dict[str, float]:
    """CUHK-PEDES protocol on ``split`` of a :class:`~.tiny.PairData`: every caption queries every image of the
    split, a match is an image of the described identity. Returns percent R@1 / R@5 / mAP, the chance R@1
    (mean over captions of same-identity images / images) and the counts."""
    from ....evaluation import evaluate_features

    img, cap = data.subset(split)
    if img.size == 0:
        raise ValueError(f"no '{split}' images in the pre-training data")
    was_training = model.training
    model.eval()
    g = torch.cat([model.encode_image(normalise(data.images[img[i:i + batch_size]]))
                   for i in range(0, img.size, batch_size)])
    text = CLIPTextEncoder(model)
    q = torch.cat([text(data.tokens[cap[i:i + batch_size]])
                   for i in range(0, cap.size, batch_size)])
    model.train(was_training)
    g_pids = data.pids[img]
    q_pids = data.pids[data.caption_image[cap]]
    res = evaluate_features(q, g, q_pids, g_pids, protocol="text", metric="cosine", progress=False)
    same = np.array([(g_pids == p).sum() for p in q_pids], dtype=np.float64)
    return {"r1": float(res.cmc[0]) * 100, "r5": float(res.cmc[4]) * 100, "t2i_map": res.mAP * 100,
            "chance": float(np.mean(same / img.size)) * 100, "num_test_images": int(img.size),
            "num_test_captions": int(cap.size)}


@torch.no_grad()
def image_features(visual: nn.Module, paths, *, feature: str = "proj", batch_size: int = 128) -> torch.Tensor:
    """Features of image files (resized to the tower's input if needed): ``proj`` = the CLIP image embedding
    (CLS after ``ln_post`` @ ``proj``), ``cls`` = CLS after ``ln_post`` before the projection. Not normalised
    (the evaluator L2-normalises for cosine)."""
    from PIL import Image

    from .image_encoder import CLIPImageEncoder

    encoder = CLIPImageEncoder(visual).eval()
    h, w = (int(v) for v in visual.image_size) if hasattr(visual, "image_size") else (128, 64)
    out = []
    for i in range(0, len(paths), batch_size):
        arrs = []
        for p in paths[i:i + batch_size]:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                arrs.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
        feats = encoder(normalise(torch.stack(arrs)))
        out.append(feats.proj if feature == "proj" else feats.cls)
    return torch.cat(out)


def reid_map_of(visual: nn.Module, root: str, domain: str = "A", *, prefix: str = "reid") -> Dict[str, float]:
    """Market-protocol mAP / R-1 (percent) of a frozen image tower on procedural domain ``domain``
    (``SynthReIDA`` .. ``D``, generated under ``<root>/synthreid`` if missing), cosine distance on the
    projected CLS (``<prefix>_map``, ``<prefix>_r1``) and on the CLS before the projection
    (``<prefix>_cls_map``)."""
    from ....data.datasets import synthetic
    from ....evaluation import evaluate_features

    ds = getattr(synthetic, f"SynthReID{domain}")(root=root)
    query, gallery = ds.query, ds.gallery
    q_pids = np.array([it[1] for it in query])
    g_pids = np.array([it[1] for it in gallery])
    q_cams = np.array([it[2] for it in query])
    g_cams = np.array([it[2] for it in gallery])
    out = {}
    for feature, key in (("proj", ""), ("cls", "_cls")):
        q = image_features(visual, [it[0] for it in query], feature=feature)
        g = image_features(visual, [it[0] for it in gallery], feature=feature)
        res = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, protocol="market", metric="cosine",
                                progress=False)
        out[f"{prefix}{key}_map"] = res.mAP * 100
        out[f"{prefix}{key}_r1"] = float(res.cmc[0]) * 100
    return out
