"""Runtime patch: fast-reid's ReidEvaluator compiles Cython inside site-packages at run time.

On failure (no Cython / compiler / write access) it calls ``sys.exit(1)`` in the middle of training. We
never compile anything at run time: ranking goes through the plugin's exact vectorised implementation.
"""
from __future__ import annotations

import importlib.util

from .base import Patch


def _compiled_ranking_missing() -> bool:
    return importlib.util.find_spec("fastreid.evaluation.rank_cylib.rank_cy") is None


def _skip_runtime_compile() -> None:
    from fastreid.evaluation.reid_evaluation import ReidEvaluator

    ReidEvaluator._compile_dependencies = lambda self: None


PATCHES = [
    Patch("no_runtime_cython", "ReidEvaluator compiles Cython in site-packages and sys.exit(1)s on failure",
          _compiled_ranking_missing, _skip_runtime_compile, stage="runtime"),
]
