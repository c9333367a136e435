"""Shared test fixtures.

Real dataset samples are found through ``FASTREID_SHARED_DATA`` (default: ``../shared/data`` next to the
repository root); tests that need them skip cleanly when the folder is absent.
"""
import os
from pathlib import Path

import pytest

import plugins  # noqa: F401  (host-compat patches + registrations, as tools/train_net.py does)

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("FASTREID_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real dataset samples; skips the test when it is not available."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data samples not found at {root} (set FASTREID_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
