"""Fixtures for the evaluation tests: fast-reid's compiled ranking built from its .pyx in a cache dir."""
import hashlib
import sys

import numpy as np
import pytest

from plugins.evaluation.reference import build_compiled_ranking, reference_pyx


@pytest.fixture(scope="session")
def compiled_ranking(request, tmp_path_factory):
    """fast-reid's rank_cy built into pytest's cache dir (never site-packages); skips if it cannot be built."""
    key = hashlib.sha1(reference_pyx().read_bytes() + sys.version.encode() + np.__version__.encode())
    name = f"fastreid_rank_cy_{key.hexdigest()[:12]}"
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    build_dir = cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)
    try:
        return build_compiled_ranking(build_dir)
    except Exception as exc:  # no Cython / compiler: the pure-Python reference still runs
        pytest.skip(f"cannot build fast-reid's compiled ranking here: {exc}")

