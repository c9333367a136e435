"""ONNX export of a model's image encoder (its eval forward on ``images``) with a dynamic batch, and its parity.

The exported graph is ``ImageEncoder``: raw 0-255 images (B, 3, H, W) float32 [+ camera ids (B,) int64 for
camera-aware models] -> the model's eval features (B, D), exactly what ``Predictor`` returns (including the
flipped-image mean when ``TEST.FLIP.ENABLED``); normalisation by ``MODEL.PIXEL_MEAN``/``STD`` is inside the graph.
Whether a model reads camera ids is measured, not assumed: the features of one batch with two different
``camids`` are compared (SIE embeddings make them differ).

Static merges (LoRA-Avg, TA, TIES, DARE, KnOTS, TSV-M) are folded into the ViT's ``nn.Linear`` weights when the
model is built (``plugins/sage/builders.py``), so their graph is the plain ViT's. Anything the exporter cannot
express raises :class:`ExportError` naming the operator.
"""
from __future__ import annotations

import contextlib
import io
import re
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import CAMIDS, IMAGES

__all__ = ["ExportError", "ImageEncoder", "reads_camids", "export_image_encoder", "onnx_features", "parity",
           "onnx_op_counts"]

OPSET = 17


class ExportError(RuntimeError):
    """The model cannot be exported; the message names the operator (or the reason)."""


class ImageEncoder(nn.Module):
    """``model``'s eval forward on ``{"images": images[, "camids": camids]}`` as a plain tensor function.

    Args:
        model: a model in eval mode mapping a contract batch to (B, D) features.
        with_camids: pass ``camids`` (B,) int64 to the model (camera-aware / SIE models).
        flip: average with the features of the horizontally flipped images (``TEST.FLIP.ENABLED``).
    """

    def __init__(self, model: nn.Module, *, with_camids: bool = False, flip: bool = False):
        super().__init__()
        self.model = model
        self.with_camids = bool(with_camids)
        self.flip = bool(flip)

    def _features(self, images: torch.Tensor, camids: Optional[torch.Tensor]) -> torch.Tensor:
        # a model's preprocess_image may normalise ``images`` in place (unpatched fast-reid does): own copy
        batch = {IMAGES: images.clone()}
        if self.with_camids:
            batch[CAMIDS] = camids
        return self.model(batch)

    def forward(self, images: torch.Tensor, camids: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = self._features(images, camids)
        if self.flip:
            feats = (feats + self._features(images.flip(dims=[3]), camids)) / 2
        return feats


@torch.no_grad()
def reads_camids(model: nn.Module, images: torch.Tensor) -> bool:
    """True when ``model``'s eval features of ``images`` change with the camera ids in the batch."""
    b = images.shape[0]
    a = model({IMAGES: images.clone(), CAMIDS: torch.zeros(b, dtype=torch.long)})
    z = model({IMAGES: images.clone(), CAMIDS: torch.ones(b, dtype=torch.long)})
    return not torch.equal(a, z)


_OP = re.compile(r"operator '([\w:.]+)'|(aten::\w+|prim::\w+|onnx::\w+)")


def export_image_encoder(model: nn.Module, path: str, example_images: torch.Tensor, *, flip: bool = False,
                         with_camids: Optional[bool] = None, opset: int = OPSET) -> ImageEncoder:
    """Export ``model`` (moved to CPU, eval) to ``path`` with a dynamic batch axis; returns the wrapper.

    ``example_images``: (B, 3, H, W) 0-255 at the config's test size (the spatial size is fixed in the graph).
    ``with_camids``: ``None`` measures it (``reads_camids``). Raises ``ExportError`` naming the operator.
    """
    model = model.cpu().eval()
    example_images = example_images.float().cpu()
    if with_camids is None:
        with_camids = reads_camids(model, example_images)
    wrapper = ImageEncoder(model, with_camids=with_camids, flip=flip).eval()
    inputs = (example_images,) + ((torch.zeros(example_images.shape[0], dtype=torch.long),) if with_camids else ())
    names = ["images"] + (["camids"] if with_camids else [])
    axes = {n: {0: "batch"} for n in names + ["features"]}
    log = io.StringIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.MultiheadAttention's eval fast path (open_clip towers) is one fused op ONNX lacks; its regular path
        # computes the same attention from exportable ops
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), contextlib.redirect_stdout(log):
            torch.onnx.export(wrapper, inputs, path, input_names=names, output_names=["features"],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as err:  # the exporter raises several types; all mean "this model cannot be exported"
        text = str(err)
        m = _OP.search(text)
        op = (m.group(1) or m.group(2)) if m else None
        what = f"operator '{op}'" if op else type(err).__name__
        raise ExportError(f"{type(model).__name__} cannot be exported to ONNX (opset {opset}): {what} is not "
                          f"supported. Exporter message: {text.splitlines()[0][:300]}") from err
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return wrapper


def onnx_features(path: str, images: torch.Tensor, camids: Optional[torch.Tensor] = None) -> np.ndarray:
    """Run the exported model with onnxruntime (CPU) -> (B, D) float32 features."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {"images": images.float().cpu().numpy()}
    if any(i.name == "camids" for i in session.get_inputs()):
        cams = camids if camids is not None else torch.zeros(images.shape[0], dtype=torch.long)
        feeds["camids"] = cams.long().cpu().numpy()
    return session.run(["features"], feeds)[0]


@torch.no_grad()
def parity(wrapper: ImageEncoder, path: str, images: torch.Tensor,
           camids: Optional[torch.Tensor] = None) -> float:
    """Max abs difference of the L2-normalised features of torch (``wrapper``) and onnxruntime on ``images``."""
    cams = camids if camids is not None else torch.zeros(images.shape[0], dtype=torch.long)
    ref = wrapper(images.float().cpu(), cams if wrapper.with_camids else None)
    got = torch.from_numpy(onnx_features(path, images, cams))
    return float((F.normalize(ref.float(), dim=1) - F.normalize(got.float(), dim=1)).abs().max())


def onnx_op_counts(path: str) -> dict:
    """{op_type: count} of the graph's nodes (e.g. to show a merged ViT has the plain ViT's graph)."""
    import onnx

    counts: dict = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts

