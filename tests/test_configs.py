"""Every YAML under configs/ loads through the one config-setup function (plugins.config.setup_cfg), and every
``add_*_config`` of plugins/**/config.py is reached by it."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from fastreid.config import get_cfg

from plugins.config import setup_cfg

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted(p for ext in ("*.yml", "*.yaml") for p in (REPO / "configs").rglob(ext))


def config_adders() -> list:
    """``add_*_config`` functions of every ``plugins/**/config.py`` (plugins.config first)."""
    adders = []
    for path in sorted((REPO / "plugins").rglob("config.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        mod = importlib.import_module(name)
        adders += [fn for n, fn in inspect.getmembers(mod, inspect.isfunction)
                   if n.startswith("add_") and n.endswith("_config") and fn.__module__ == name]
    return sorted(adders, key=lambda fn: fn.__name__ != "add_plugins_config")


def full_cfg():
    cfg = get_cfg()
    for add in config_adders():
        add(cfg)
    return cfg


def test_adders_are_discovered():
    names = {fn.__name__ for fn in config_adders()}
    assert "add_plugins_config" in names


@pytest.mark.parametrize("yml", YAMLS, ids=[str(p.relative_to(REPO / "configs")) for p in YAMLS])
def test_config_loads(yml):
    cfg = setup_cfg(str(yml))
    assert cfg.MODEL.META_ARCHITECTURE


def test_setup_cfg_reaches_every_adder():
    """A key added by any adder is in the config setup_cfg builds (a method whose adder is not called by
    setup_cfg would make its configs fail to load in train_net)."""
    assert set(_flat(full_cfg())) == set(_flat(setup_cfg()))


def _flat(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("MODEL:\n  NOT_A_KEY: 1\n")
    with pytest.raises(KeyError, match="NOT_A_KEY"):
        full_cfg().merge_from_file(str(bad))


@pytest.mark.parametrize("key", ["DATASETS.NAMES", "DATASETS.TESTS"])
def test_misspelt_dataset_fails_before_training(key):
    with pytest.raises(KeyError, match=r"unregistered datasets \['Market15O1'\]; registered: .*'Market1501'"):
        setup_cfg("", [key, "('Market15O1',)"])
