"""Runtime patch: load every fast-reid checkpoint with ``torch.load(weights_only=True)``.

fast-reid 1.4.0 calls ``torch.load(f)`` without ``weights_only``: on torch < 2.6 that unpickles arbitrary
code, on torch >= 2.6 foreign checkpoints fail with an opaque ``UnpicklingError``. We pin
``weights_only=True``, allow-list the plain-data types fast-reid's own checkpoints carry, and turn a refusal
into an error that names the file. There is deliberately no unsafe fallback.
"""
from __future__ import annotations

import inspect
import os
import pickle

import numpy as np
import torch

from .base import Patch


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds objects other than tensors and plain data, so it is not unpickled."""


class CheckpointFormatError(ValueError):
    """A file given as a checkpoint is not a torch checkpoint at all (empty, text, truncated)."""


def _safe_globals() -> list:
    """Plain-data globals that appear in real ReID checkpoints (numpy scalars / arrays in logs and metrics)."""
    allowed = [np.dtype, np.ndarray]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool", "uint8")]
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["scalar", "_reconstruct"])
        except ImportError:
            continue
        allowed += [getattr(mod, "scalar"), getattr(mod, "_reconstruct")]
        break
    return allowed


_TORCH_LOAD = torch.load  # torch's own, before the process-wide pin below


def _refusal(path, err: Exception) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"Refusing to unpickle checkpoint '{path}': it contains objects that are not tensors or plain data, "
        f"and loading it would run arbitrary code. Re-save only its state_dict (tensors) where you trust the "
        f"file (torch.save(obj['model'] or obj.state_dict(), ...)), or use tools/convert_weights.py for the official "
        f"formats it knows. torch said: {str(err).splitlines()[0]}")


def weights_only_load(f, map_location=None, pickle_module=None, *, weights_only=None, **kwargs):
    """``torch.load`` that always reads with ``weights_only=True`` (the plain-data allow-list included), whatever
    the caller passes and whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says; a refusal raises
    :class:`UnsafeCheckpointError` naming the file. Installed as ``torch.load`` process-wide, so fast-reid's
    backbone loaders (``MODEL.BACKBONE.PRETRAIN_PATH``), timm and every other library read checkpoints safely."""
    if pickle_module is not None:
        raise UnsafeCheckpointError(f"Refusing to load '{f}' with a custom pickle module")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return _TORCH_LOAD(f, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        raise _refusal(f, err) from None


def load_checkpoint_file(path: str) -> dict:
    """Load ``path`` on CPU with ``weights_only=True``; fail with a message naming the file otherwise."""
    try:
        obj = weights_only_load(path, map_location=torch.device("cpu"))
    except UnsafeCheckpointError:
        raise
    except (EOFError, KeyError, IndexError, RuntimeError, ValueError) as err:
        # what torch raises for an empty, text or truncated file (EOFError, KeyError 101, "pop from empty list",
        # "PytorchStreamReader failed ...") says nothing about the file
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size is None:
            raise FileNotFoundError(f"checkpoint '{path}' does not exist") from None
        raise CheckpointFormatError(f"'{path}' ({size} bytes) is not a readable torch checkpoint (empty, text or "
                                    f"truncated?): {type(err).__name__}: {err}") from None
    if not isinstance(obj, dict):
        raise UnsafeCheckpointError(f"Checkpoint '{path}' holds a {type(obj).__name__}, expected a dict")
    if "model" not in obj:
        # A bare state_dict (e.g. a torchreid / timm file): fast-reid's Checkpointer expects {"model": ...}.
        obj = {"model": obj}
    return obj


def read_safetensors(path: str) -> dict:
    """All tensors of a ``.safetensors`` file on CPU; a missing, truncated or foreign file fails naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file '{path}' does not exist")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointFormatError(f"'{path}' ({os.path.getsize(path)} bytes) is not a readable safetensors file "
                                    f"(truncated or another format?): {err}") from None


def check_state(module: "torch.nn.Module", state: dict, *, what: str, optional_keys=(), ignore_keys=()) -> dict:
    """Check that ``state`` fits ``module`` (see :func:`load_state_checked`) without loading it; returns ``state``
    without ``ignore_keys``."""
    ignore = set(ignore_keys)
    state = {k: v for k, v in state.items() if k not in ignore}
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{what} does not fit the model: {len(wrong)} tensors differ in shape, e.g. {wrong[:3]}")
    allowed = ignore | set(optional_keys)
    missing = [k for k in own if k not in state and k not in allowed]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise KeyError(f"{what} does not fit the model: missing {missing[:5]} ({len(missing)} keys), unexpected "
                       f"{unexpected[:5]} ({len(unexpected)} keys)")
    return state


def load_state_checked(module: "torch.nn.Module", state: dict, *, what: str, optional_keys=(),
                       ignore_keys=()) -> None:
    """Load ``state`` into ``module`` strictly, naming ``what`` (a file, or how the state was made) in every error.

    ``ignore_keys`` are dropped from ``state`` and may be missing from it (e.g. a source model's classifier, whose
    class count is not the model's); ``optional_keys`` may be missing from ``state`` but are loaded when present.
    Any other key the module has and ``state`` lacks, any key ``state`` has and the module lacks, and any tensor
    whose shape differs from the module's raise: ValueError for shapes (every offending key with both shapes),
    KeyError for missing / unexpected keys.
    """
    state = check_state(module, state, what=what, optional_keys=optional_keys, ignore_keys=ignore_keys)
    module.load_state_dict(state, strict=False)  # strictness checked above, with the file's name


def _loader_not_pinned() -> bool:
    from fastreid.utils.checkpoint import Checkpointer

    loader = Checkpointer._load_file
    return not getattr(loader, "_pins_weights_only", False) and "weights_only=True" not in inspect.getsource(loader)


def _pin_weights_only() -> None:
    from fastreid.utils.checkpoint import Checkpointer

    def _load_file(self, f: str):
        return load_checkpoint_file(f)

    _load_file._pins_weights_only = True
    Checkpointer._load_file = _load_file


def _torch_load_not_pinned() -> bool:
    return torch.load is not weights_only_load


def _pin_torch_load() -> None:
    torch.load = weights_only_load


PATCHES = [
    Patch("torch_load_weights_only",
          "fast-reid's backbone loaders (PRETRAIN_PATH) call torch.load without weights_only: with "
          "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (or torch < 2.6) a hostile pickle runs its payload",
          _torch_load_not_pinned, _pin_torch_load, stage="runtime"),
    Patch("checkpoint_weights_only",
          "Checkpointer._load_file calls torch.load without weights_only (unsafe, or UnpicklingError on torch>=2.6)",
          _loader_not_pinned, _pin_weights_only, stage="runtime"),
]
