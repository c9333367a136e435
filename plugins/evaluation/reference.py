"""fast-reid's own ranking, for verification and benchmarks only (never used to report results).

``build_compiled_ranking(dir)`` compiles fast-reid's ``rank_cy.pyx`` (as shipped with the installed fastreid)
into ``dir`` with Cython + the C compiler, never into site-packages. ``stable_argsort()`` makes numpy's
argsort stable while active; both fast-reid rankings look ``np.argsort`` up at call time, so under it they
rank with this package's tie order (ascending distance, then gallery index).
"""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

_SETUP = """
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
setup(name="fastreid_rank_cy_reference", script_args=["build_ext", "--inplace"],
      ext_modules=cythonize([Extension("rank_cy", ["rank_cy.pyx"], include_dirs=[np.get_include()])],
                            quiet=True))
"""


def reference_pyx() -> Path:
    spec = importlib.util.find_spec("fastreid")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastreid is not installed: no reference ranking to build")
    path = Path(list(spec.submodule_search_locations)[0]) / "evaluation" / "rank_cylib" / "rank_cy.pyx"
    if not path.is_file():
        raise RuntimeError(f"fast-reid's Cython ranking source not found at {path}")
    return path


def build_compiled_ranking(build_dir: str | Path, timeout: float = 600):
    """Compile fast-reid's rank_cy.pyx into ``build_dir`` (reused if already built); return the module.

    Raises RuntimeError (with the compiler output) when Cython or a C compiler is missing or fails.
    """
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    built = sorted(build_dir.glob("rank_cy*.so")) + sorted(build_dir.glob("rank_cy*.pyd"))
    if not built:
        shutil.copy(reference_pyx(), build_dir / "rank_cy.pyx")
        proc = subprocess.run([sys.executable, "-c", _SETUP], cwd=build_dir, capture_output=True, text=True,
                              timeout=timeout)
        built = sorted(build_dir.glob("rank_cy*.so")) + sorted(build_dir.glob("rank_cy*.pyd"))
        if proc.returncode != 0 or not built:
            raise RuntimeError(f"building fast-reid's rank_cy in {build_dir} failed:\n{proc.stdout[-2000:]}"
                               f"\n{proc.stderr[-2000:]}")
    spec = importlib.util.spec_from_file_location("rank_cy", built[0])  # must match PyInit_rank_cy
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def stable_argsort():
    """Temporarily make ``numpy.argsort`` stable (ties keep index order)."""
    original = np.argsort

    def argsort(a, axis=-1, kind=None, order=None, **kwargs):
        return original(a, axis=axis, kind="stable", order=order, **kwargs)

    np.argsort = argsort
    try:
        yield
    finally:
        np.argsort = original
