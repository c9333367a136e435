"""Runtime patch: torchvision >= 0.13 dropped RandomAffine(resample=, fillcolor=), which INPUT.AFFINE uses."""
from __future__ import annotations

import inspect
import types

import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

from .base import Patch


class LegacyRandomAffine(T.RandomAffine):
    """Accepts the pre-0.13 keyword names: ``resample`` -> ``interpolation``, ``fillcolor`` -> ``fill``."""

    def __init__(self, *args, resample=None, fillcolor=None, **kwargs):
        if resample is not None and "interpolation" not in kwargs:
            # resample=False / 0 meant nearest in the old API
            kwargs["interpolation"] = InterpolationMode.NEAREST if not resample else InterpolationMode.BILINEAR
        if fillcolor is not None and "fill" not in kwargs:
            kwargs["fill"] = fillcolor
        super().__init__(*args, **kwargs)


def _affine_lacks_resample() -> bool:
    return "resample" not in inspect.signature(T.RandomAffine.__init__).parameters


def _map_affine_kwargs() -> None:
    import fastreid.data.transforms.build as build

    # A namespace that is torchvision.transforms except for RandomAffine; torchvision itself stays untouched.
    shim = types.SimpleNamespace(**{k: getattr(T, k) for k in dir(T) if not k.startswith("__")})
    shim.RandomAffine = LegacyRandomAffine
    build.T = shim


PATCHES = [
    Patch("affine_kwargs", "RandomAffine.__init__() got an unexpected keyword argument 'resample' (INPUT.AFFINE)",
          _affine_lacks_resample, _map_affine_kwargs, stage="runtime"),
]
