"""Shared test fixtures.

Real dataset samples are found through ``FASTREID_SHARED_DATA`` (default: ``../shared/data`` next to the
repository root); tests that need them skip cleanly when the folder is absent.
"""
import contextlib
import importlib.util
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import plugins  # noqa: F401  (host-compat patches + registrations, as tools/train_net.py does)

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("FASTREID_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _tree_state(root: Path) -> dict:
    """Names and modification times of ``root``'s first two levels (what generating a dataset there changes)."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in [*root.iterdir(), *root.glob("*/*")]}


@pytest.fixture(scope="session", autouse=True)
def datasets_outside_the_repository(tmp_path_factory):
    """Every test reads and generates procedural data under a session tmp dir, never the user's ``./datasets``
    (fast-reid reads FASTREID_DATASETS once, at import, into ``fastreid.data.build._root``: both are set). At the
    end, ``./datasets`` must be as the suite found it; a test that bypassed both fails the session here."""
    import fastreid.data.build as fastreid_build

    user = REPO_ROOT / "datasets"
    before = _tree_state(user)
    root = str(tmp_path_factory.mktemp("datasets"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTREID_DATASETS", root)
        mp.setattr(fastreid_build, "_root", root)
        yield root
    changed = sorted(set(before.items()) ^ set(_tree_state(user).items()))
    assert not changed, f"the test suite changed {user}: {changed[:5]}"


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


def load_train_net(name: str = "plugins_test_train_net"):
    """``tools/train_net.py`` as a module (its ``main`` runs in-process)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _train_net_session(datasets: str, patches=()):
    """Run ``tools/train_net.py``'s ``main`` in-process on procedural data generated under ``datasets``.

    Yields ``(main, monkeypatch)``; ``main(config_file, *argv)`` seeds python / numpy / torch with 0 and returns
    what train_net's ``main`` returns. ``patches``: ``(target, name, value)`` set for the session (e.g. a smaller
    synthetic domain). fast-reid's ``default_setup`` is skipped (it would add lasting log handlers and re-seed every
    RNG at random); the "fastreid" logger is at INFO meanwhile, so stage ``log.txt`` files get the records.
    """
    logger = logging.getLogger("fastreid")
    level = logger.level
    from fastreid.engine import default_argument_parser  # after `import plugins` (the host-compat patches)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTREID_DATASETS", datasets)  # read at call time by plugins.engine.loaders
        mp.setattr("fastreid.data.build._root", datasets)  # fast-reid read it once, at import
        for target, name, value in patches:
            mp.setattr(target, name, value)
        train_net = load_train_net()
        mp.setattr(train_net, "default_setup", lambda cfg, args: None)
        logger.setLevel(logging.INFO)

        def main(config_file, *argv):
            torch.manual_seed(0)
            np.random.seed(0)
            random.seed(0)
            args = default_argument_parser().parse_args(["--config-file", str(config_file), *argv])
            return train_net.main(args)

        try:
            yield main, mp
        finally:
            logger.setLevel(level)


@pytest.fixture(scope="session")
def train_net_session():
    """The ``_train_net_session`` context manager, for module-scoped pipeline fixtures."""
    return _train_net_session


@pytest.fixture(scope="session")
def train_net_loader():
    """``load_train_net`` (tools/train_net.py as a module), for tests outside a ``train_net_session``."""
    return load_train_net

