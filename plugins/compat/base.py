"""The contract every host-compatibility patch follows.

A patch never edits files on disk. It is applied only when its feature test (``needed``) says the host
would otherwise break, and applying it twice is harmless (``apply_patches`` remembers what it applied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Patch:
    name: str                     # short id, also used in third_party/README.md
    why: str                      # the failure it prevents, as the host reports it
    needed: Callable[[], bool]    # feature test: True when the running host has the problem
    apply: Callable[[], None]     # the fix (monkeypatch in memory only)
    stage: str = "import"         # "import": before fastreid is imported; "runtime": after


_applied: dict[str, bool] = {}


def apply_patches(patches: list[Patch], stage: str) -> list[str]:
    """Apply every patch of ``stage`` whose feature test fires; return the names applied by this call."""
    done = []
    for patch in patches:
        if patch.stage != stage or patch.name in _applied:
            continue
        need = patch.needed()
        if need:
            patch.apply()
            done.append(patch.name)
        _applied[patch.name] = need
    return done


def applied_patches() -> dict[str, bool]:
    """Name -> whether it was needed (and applied), for every patch examined so far."""
    return dict(_applied)
