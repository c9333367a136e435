"""Import-time patches: names fast-reid 1.4.0 imports that no longer exist on Python >= 3.10 / torch 2.x."""
from __future__ import annotations

import collections
import collections.abc
import importlib.machinery
import importlib.util
import math
import sys
import types

import numpy as np

from .base import Patch

_ABC_NAMES = ("Mapping", "MutableMapping", "Sequence", "MutableSequence", "Iterable", "Iterator",
              "Callable", "Set", "MutableSet", "Hashable", "Sized", "Container")


def _torch_six_missing() -> bool:
    return importlib.util.find_spec("torch._six") is None


def _install_torch_six() -> None:
    # torch removed torch._six in 2.0; fast-reid imports string_classes from it (data/build.py).
    shim = types.ModuleType("torch._six")
    # A spec keeps importlib.util.find_spec("torch._six") answering (it raises ValueError for spec-less modules).
    shim.__spec__ = importlib.machinery.ModuleSpec("torch._six", None)
    shim.string_classes = (str, bytes)
    shim.int_classes = (int,)
    shim.inf = math.inf
    shim.nan = math.nan
    sys.modules["torch._six"] = shim


def _collections_abc_missing() -> bool:
    return not hasattr(collections, "Mapping")


def _alias_collections_abc() -> None:
    for name in _ABC_NAMES:
        setattr(collections, name, getattr(collections.abc, name))


def _numpy_bool_missing() -> bool:
    # np.bool was removed in numpy 1.24 and re-added (as np.bool_) in 2.0.
    return not hasattr(np, "bool")


def _alias_numpy_bool() -> None:
    np.bool = np.bool_


PATCHES = [
    Patch("torch_six", "No module named 'torch._six' on `import fastreid.data`",
          _torch_six_missing, _install_torch_six),
    Patch("collections_abc", "cannot import name 'Mapping' from 'collections' (Python >= 3.10)",
          _collections_abc_missing, _alias_collections_abc),
    Patch("numpy_bool", "module 'numpy' has no attribute 'bool' in fastreid.evaluation.rank (CUHK03 path)",
          _numpy_bool_missing, _alias_numpy_bool),
]
