"""The labelled tables of the SAGE analyses (``analysis.py`` computes them, ``analysis_plots.py`` draws them): ViT
block-linear names -> (block, module type), ``Table`` and ``TypeLayerTables``."""
import re
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence, Tuple

import numpy as np
from tabulate import tabulate

__all__ = ["MODULE_TYPES", "module_type", "block_index", "Table", "TypeLayerTables", "tables_from_per_layer"]

MODULE_TYPES = ("QKV", "Proj", "FC1", "FC2")
_TYPE_OF = {"attn.qkv": "QKV", "attn.proj": "Proj", "mlp.fc1": "FC1", "mlp.fc2": "FC2"}
# Any prefix before ``blocks.`` (``backbone.vit.blocks.3.attn.qkv``); the name must end at the linear.
_BLOCK_LINEAR = re.compile(r"(?:^|\.)blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)$")

def _parse(name: str) -> Tuple[int, str]:
    m = _BLOCK_LINEAR.search(name)
    if m is None:
        raise ValueError(f"module name {name!r} is not a ViT block linear "
                         f"(expected '...blocks.<i>.attn.qkv|attn.proj|mlp.fc1|mlp.fc2')")
    return int(m.group(1)), _TYPE_OF[m.group(2)]


def module_type(name: str) -> str:
    """``"QKV"``, ``"Proj"``, ``"FC1"`` or ``"FC2"`` for a ViT block linear's module name."""
    return _parse(name)[1]


def block_index(name: str) -> int:
    """Transformer block index ``i`` of ``...blocks.<i>.<linear>``."""
    return _parse(name)[0]


@dataclass(frozen=True)
class Table:
    """A labelled 2-D table: ``values`` (len(rows), len(cols))."""

    values: np.ndarray
    rows: Tuple[str, ...]
    cols: Tuple[str, ...]

    def __post_init__(self):
        if self.values.shape != (len(self.rows), len(self.cols)):
            raise ValueError(f"table values {self.values.shape} do not fit {len(self.rows)} rows x "
                             f"{len(self.cols)} cols")

    def markdown(self, row_header: str = "", floatfmt: str = ".3f") -> str:
        """GitHub-flavoured markdown table."""
        body = [[r, *v] for r, v in zip(self.rows, self.values.tolist())]
        return tabulate(body, headers=[row_header, *self.cols], tablefmt="github", floatfmt=floatfmt)


@dataclass(frozen=True)
class TypeLayerTables:
    """One quantity per expert, per module type (mean over blocks) and per layer."""

    by_type: Table    # (module types, K)
    per_layer: Table  # (layers, K), rows are module names in model order


def tables_from_per_layer(per_layer: Mapping[str, np.ndarray], expert_names: Sequence[str]) -> TypeLayerTables:
    """``layer name -> (K,)`` values -> per-layer table and per-module-type mean over blocks (NaN layers, e.g.
    an undefined CKA, are left out of the mean)."""
    names = list(per_layer)
    if not names:
        raise ValueError("no layers given")
    k = len(expert_names)
    values = np.stack([np.asarray(per_layer[n], dtype=np.float64) for n in names])
    if values.shape != (len(names), k):
        raise ValueError(f"per-layer values have shape {values.shape}, expected ({len(names)}, {k}) for experts "
                         f"{list(expert_names)}")
    types = [module_type(n) for n in names]
    present = [t for t in MODULE_TYPES if t in types]
    with warnings.catch_warnings():  # a module type whose values are all NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        by_type = np.stack([np.nanmean(values[[t == p for t in types]], axis=0) for p in present])
    cols = tuple(expert_names)
    return TypeLayerTables(by_type=Table(by_type, tuple(present), cols), per_layer=Table(values, tuple(names), cols))
