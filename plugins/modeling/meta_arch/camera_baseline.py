"""fast-reid's Baseline that also hands the camera ids to a backbone whose forward takes ``camids``."""
import inspect

import torch

from fastreid.modeling.meta_arch.baseline import Baseline
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY


@META_ARCH_REGISTRY.register()
class CameraAwareBaseline(Baseline):
    """Baseline (same heads and losses) calling ``backbone(images, camids=batched_inputs["camids"])`` when the
    backbone's forward has a ``camids`` argument, else ``backbone(images)``. Eval returns (B, D) features."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A backbone may take camids but not use them (e.g. the timm ViT with its SIE embedding off).
        self.backbone_takes_camids = ("camids" in inspect.signature(self.backbone.forward).parameters
                                      and getattr(self.backbone, "uses_camids", True))

    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        if self.backbone_takes_camids and isinstance(batched_inputs, dict) and "camids" in batched_inputs:
            camids = batched_inputs["camids"]
            if not torch.is_tensor(camids):
                raise TypeError(f"the backbone needs integer camera ids, got {type(camids).__name__} "
                                f"(e.g. {camids[:2]}): build the dataset with relabel=True or integer camids")
            features = self.backbone(images, camids=camids.to(images.device))
        else:
            features = self.backbone(images)
        if self.training:
            if "targets" not in batched_inputs:
                raise KeyError("Person ID annotation ('targets') missing in training batch")
            targets = batched_inputs["targets"].to(images.device)
            if targets.sum() < 0:  # fast-reid's PreciseBN convention
                targets.zero_()
            outputs = self.heads(features, targets)
            return self.losses(outputs, targets)
        return self.heads(features)
