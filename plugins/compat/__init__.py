"""Host-compatibility layer for fast-reid 1.4.0 on Python >= 3.10, torch 2.x and numpy 2.x.

``apply_import_patches()`` must run before any ``fastreid`` import (``import plugins`` does it);
``apply_runtime_patches()`` patches fast-reid objects once it is importable. Each patch is feature-tested,
only in memory, and listed with its test in third_party/README.md.
"""
from .base import Patch, applied_patches, apply_patches
from . import python_stdlib

IMPORT_PATCHES = list(python_stdlib.PATCHES)


def apply_import_patches() -> list[str]:
    return apply_patches(IMPORT_PATCHES, "import")


def runtime_patches() -> list[Patch]:
    # Imported lazily: these modules import fastreid, which needs the import-time patches first.
    from . import checkpoint, dataloader, distributed, evaluator, optimizer, transforms
    from . import meta_arch, rerank, training

    return (checkpoint.PATCHES + dataloader.PATCHES + distributed.PATCHES + evaluator.PATCHES
            + transforms.PATCHES + rerank.PATCHES + optimizer.PATCHES + training.PATCHES + meta_arch.PATCHES)


def apply_runtime_patches() -> list[str]:
    apply_import_patches()
    return apply_patches(runtime_patches(), "runtime")


__all__ = ["Patch", "applied_patches", "apply_import_patches", "apply_runtime_patches", "runtime_patches"]
