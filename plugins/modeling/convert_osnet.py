"""A torchreid OSNet ReID checkpoint -> a fast-reid ``Baseline`` checkpoint (the mapping behind
``tools/convert_weights.py --from torchreid-osnet``):

    python tools/convert_weights.py --from torchreid-osnet --input osnet_x0_25_market1501.pt \
        --output osnet_x0_25_fastreid.pth [--config-file configs/base/osnet_x0_25_market_eval.yml] [--drop-classifier]

Key mapping (torchreid -> fast-reid Baseline with ``build_osnet_backbone`` + ``FCEmbeddingHead``):

| torchreid          | fast-reid              | why                                                              |
|--------------------|------------------------|------------------------------------------------------------------|
| ``conv1..conv5.*`` | ``backbone.conv1..5.*``| fast-reid's OSNet is a port of torchreid's: same module names      |
| ``fc.0/1.*``       | ``heads.fc.0/1.*``     | the 512-d embedding (Linear, BN1d; ReLU has no weights): torchreid's eval feature |
| ``classifier.weight`` | ``heads.weight``    | identity classifier (only when MODEL.HEADS.NUM_CLASSES matches)   |
| ``classifier.bias``   | dropped             | fast-reid's margin-softmax classifiers have no bias; eval never uses it |

The input is read with ``torch.load(weights_only=True)`` (through the compat layer's loader): a file holding
anything but tensors and plain data is refused, never unpickled. Every source and target key is accounted for in
the printed table; unmatched, missing or shape-mismatched backbone/fc keys make the tool exit with status 1.
The output is ``{"model": state_dict}`` (tensors only) as a torch file, because fast-reid's ``Checkpointer``
(patched by plugins/compat/checkpoint.py) reads torch files, not safetensors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from fastreid.modeling.meta_arch import build_model
from tabulate import tabulate

from ..compat.checkpoint import load_checkpoint_file
from ..config import setup_cfg

DEFAULT_CONFIG = os.path.join("configs", "base", "osnet_x0_25_market_eval.yml")  # relative to the repository
DROPPED = {"classifier.bias": "fast-reid classifiers have no bias; eval does not use the classifier"}


def map_key(key: str) -> str | None:
    """torchreid OSNet state-dict key -> fast-reid Baseline key; None when the key is deliberately dropped."""
    if key in DROPPED:
        return None
    if key.startswith(("conv1.", "conv2.", "conv3.", "conv4.", "conv5.")):
        return "backbone." + key
    if key.startswith("fc."):
        return "heads." + key
    if key == "classifier.weight":
        return "heads.weight"
    return "<no rule>"


def read_torchreid_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a torchreid checkpoint (bare state dict, or torchreid's ``{"state_dict": ...}``) safely.

    Raises ``plugins.compat.checkpoint.UnsafeCheckpointError`` when the file holds non-tensor objects.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torchreid checkpoint '{path}' does not exist")
    state = load_checkpoint_file(path)["model"]  # bare state dicts come back wrapped as {"model": ...}
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' does not hold a state dict (found {type(state).__name__})")
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"'{path}' holds no tensors: not a model checkpoint")
    return tensors


@dataclass
class ConversionReport:
    """Outcome of a conversion: the converted tensors and one row per source/target key."""
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (source key, target key, status)

    def rows_with(self, status: str) -> list[tuple[str, str, str]]:
        """Rows whose status starts with ``status`` ("loaded", "dropped", "unmatched", "missing", "shape")."""
        return [r for r in self.rows if r[2].startswith(status)]

    def problems(self) -> list[tuple[str, str, str]]:
        """Rows that did not load, except the optional classifier (it only matters for same-ids fine-tuning)."""
        return [(s, t, st) for s, t, st in self.rows
                if st != "loaded" and not st.startswith("dropped")
                and not (s.startswith("classifier.") or t == "heads.weight")]

    def table(self, only_problems: bool = False) -> str:
        counts: dict[str, int] = {}
        for _, _, st in self.rows:
            counts[st.split(" (")[0]] = counts.get(st.split(" (")[0], 0) + 1
        rows = [r for r in self.rows if r[2] != "loaded"] if only_problems else self.rows
        summary = tabulate(sorted(counts.items()), headers=["status", "keys"], tablefmt="github")
        detail = tabulate(rows, headers=["torchreid key", "fast-reid key", "status"], tablefmt="github")
        return summary + ("\n\n" + detail if rows else "")


def convert(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
            drop_classifier: bool = False) -> ConversionReport:
    """Map ``source`` (torchreid) onto the keys/shapes of ``target`` (a fast-reid model's state dict)."""
    report = ConversionReport()
    filled = set()
    for key, value in source.items():
        new_key = map_key(key)
        if drop_classifier and key.startswith("classifier."):
            report.rows.append((key, "-", "dropped (--drop-classifier)"))
        elif new_key is None:
            report.rows.append((key, "-", f"dropped ({DROPPED[key]})"))
        elif new_key not in target:
            report.rows.append((key, "-", "unmatched"))
        elif tuple(target[new_key].shape) != tuple(value.shape):
            report.rows.append((key, new_key, f"shape mismatch ({tuple(value.shape)} vs "
                                              f"{tuple(target[new_key].shape)})"))
        else:
            report.state_dict[new_key] = value.to(target[new_key].dtype).contiguous()
            report.rows.append((key, new_key, "loaded"))
            filled.add(new_key)
    for key in target:
        if key not in filled and not any(r[1] == key for r in report.rows):
            report.rows.append(("-", key, "missing"))
    return report


def build_target(config_file: str, opts: list[str] | None = None) -> torch.nn.Module:
    """The fast-reid model the checkpoint is converted for (built on CPU, no pretraining download)."""
    cfg = setup_cfg(config_file, list(opts or []) + ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False"])
    return build_model(cfg)
