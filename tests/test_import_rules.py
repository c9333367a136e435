"""Shared code never imports a method package; methods never import each other (absolute and relative imports)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from plugins.config import METHODS as METHOD_PACKAGES

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
# every method package (plugins.config.METHODS), and the folders reserved for the methods still to come
METHODS = tuple(dict.fromkeys((*METHOD_PACKAGES, "moekd", "mosaic", "demo", "dmadapter")))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PLUGINS.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved against its package."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module
            found.add(root)
            found.update(f"{root}.{a.name}" for a in node.names)  # `from plugins import sage`
    return found


def owner(module: str) -> str | None:
    """The method package a module name belongs to, or None for shared code / other libraries."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "plugins" and parts[1] in METHODS else None


def violations() -> list[str]:
    bad = []
    for path in sorted(PLUGINS.rglob("*.py")):
        me = owner(_module_name(path) + ".x")
        for mod in imported_modules(path):
            other = owner(mod)
            if other and other != me:
                where = f"method '{me}'" if me else "shared code"
                bad.append(f"{path.relative_to(PLUGINS.parent)} ({where}) imports {mod}")
    return bad


def test_no_cross_method_or_shared_to_method_imports():
    assert violations() == []


@pytest.mark.parametrize("rel,src,expect", [
    ("plugins/layers/x.py", "from ..sage import gate\n", "plugins.sage"),
    ("plugins/layers/x.py", "from plugins.moekd.meta_arch import M\n", "plugins.moekd.meta_arch"),
    ("plugins/sage/x.py", "from .. import demo\n", "plugins.demo"),
    ("plugins/sage/sub/__init__.py", "from ...mosaic import y\n", "plugins.mosaic"),
    ("plugins/data/x.py", "import plugins.dmadapter.config as c\n", "plugins.dmadapter.config"),
])
def test_parser_sees_every_import_form(tmp_path, monkeypatch, rel, src, expect):
    fake = tmp_path / "plugins"
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src)
    monkeypatch.setattr(__import__(__name__), "PLUGINS", fake)
    mods = imported_modules(path)
    assert expect in mods
    assert owner(expect) in METHODS
