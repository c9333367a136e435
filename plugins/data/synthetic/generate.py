"""Generate synthetic multi-domain ReID datasets on disk (atomically, with a manifest).

Layout of one domain folder (``<root>/<domain_dir>/``)::

    bounding_box_train/ query/ bounding_box_test/     Market-1501       (format "market")
    market_attribute.mat                              Market-attribute  (format "market_attribute")
    RGBNT201/{train_171,test}/{RGB,NI,TI}/            RGBNT201          (format "rgbnt201")
    CUHK-PEDES/reid_raw.json, CUHK-PEDES/imgs/        CUHK-PEDES        (format "cuhk_pedes")
    manifest.json                                     generator version, seed, sizes, formats, counts
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from tqdm import tqdm

from .domain import make_domain
from .plan import GENERATOR_VERSION, SynthConfig, plan_domain
from .render import render
from .writers import WRITERS

logger = logging.getLogger(__name__)
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _owner() -> str:
    """Host and pid in temporary folder names (at call time: forked processes have their own pid), so that the
    folders of a killed run can be told from those of a live one."""
    return f"{_HOST}-{os.getpid()}"
FORMATS = tuple(WRITERS)
MANIFEST = "manifest.json"


def domain_dir_name(domain: str) -> str:
    return domain


def manifest_for(domain: str, cfg: SynthConfig, formats: Sequence[str]) -> dict:
    """The part of the manifest that decides whether an existing folder can be reused."""
    return {"generator_version": GENERATOR_VERSION, "domain": domain, "config": cfg.to_dict(),
            "formats": sorted(formats)}


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RuntimeError(f"corrupt manifest {path}: {e}; delete the folder to regenerate it") from e


def is_current(folder: Path, domain: str, cfg: SynthConfig, formats: Sequence[str]) -> bool:
    """True when ``folder`` was written by this generator version with these sizes and (at least) ``formats``."""
    found = read_manifest(folder)
    if found is None:
        return False
    want = manifest_for(domain, cfg, formats)
    return (found.get("generator_version") == want["generator_version"] and found.get("domain") == domain
            and found.get("config") == want["config"] and set(want["formats"]) <= set(found.get("formats", [])))


def _write_domain(out: Path, domain: str, cfg: SynthConfig, formats: Sequence[str], progress: bool) -> List[dict]:
    plan = plan_domain(domain, cfg)
    style = make_domain(domain, cfg.seed, cfg.num_cameras)
    writers = [WRITERS[f](out, plan, style) for f in formats]
    mods = tuple(sorted({m for w in writers for m in w.modalities}))
    boxes = plan.boxes if mods else []
    for box in tqdm(boxes, desc=f"synthetic domain {domain}", unit="img", disable=not progress, leave=False):
        rng = np.random.default_rng(np.random.SeedSequence(list(box.seed)))
        idt = plan.identities.get(box.source_pid)
        images = render(idt, style, style.cameras[box.cam - 1], rng, cfg.height, cfg.width, mods, box.kind)
        for w in writers:
            w.add(box, images)
    return [w.close() for w in writers]


def generate_domain(root: Path | str, domain: str, cfg: SynthConfig = SynthConfig(),
                    formats: Sequence[str] = FORMATS, progress: bool = True, force: bool = False) -> dict:
    """Write (or reuse) ``<root>/<domain>``; returns its manifest.

    The folder is built in a temporary sibling and renamed into place, so concurrent processes (e.g. several
    distributed ranks) never see half-written data; a stale folder (other version / seed / sizes) is replaced.
    """
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; available: {list(WRITERS)}")
    cfg.validate()
    root = Path(root)
    final = root / domain_dir_name(domain)
    if not force and is_current(final, domain, cfg, formats):
        return read_manifest(final)
    found = read_manifest(final)
    if found is not None and found.get("config") == cfg.to_dict() \
            and found.get("generator_version") == GENERATOR_VERSION:
        formats = sorted(set(formats) | set(found.get("formats", [])))  # add formats, keep the ones there
    root.mkdir(parents=True, exist_ok=True)
    logger.info(f"Generating synthetic ReID domain '{domain}' into {final} (seed {cfg.seed}, "
                f"{cfg.train_ids}+{cfg.test_ids} ids x {cfg.images_per_id} images, formats {list(formats)})")
    t0 = time.perf_counter()
    remove_orphans(root, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{_owner()}-", dir=root))
    try:
        summary = _write_domain(tmp, domain, cfg, formats, progress)
        manifest = dict(manifest_for(domain, cfg, formats), seconds=round(time.perf_counter() - t0, 2),
                        written=summary)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _publish(tmp, final, domain, cfg, formats)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return read_manifest(final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(root: Path, name: str) -> List[Path]:
    """Delete the temporary folders of ``name`` (``.<name>.tmp-*`` / ``.<name>.old-*``) that a killed run of THIS
    host left behind: their writer's pid is gone. Folders of live processes and of other hosts (a shared
    filesystem) are left alone. Returns the folders removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(name)}\.(?:tmp|old)-{re.escape(_HOST)}-(\d+)-")
    for path in Path(root).glob(f".{name}.*"):
        m = pattern.match(path.name)
        if m and path.is_dir() and not _pid_alive(int(m.group(1))):
            logger.warning(f"removing {path}: left by an interrupted generation (process {m.group(1)} is gone)")
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _publish(tmp: Path, final: Path, domain: str, cfg: SynthConfig, formats: Sequence[str]) -> None:
    """Atomically move ``tmp`` to ``final``; if another process published an equal folder first, keep it."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        if is_current(final, domain, cfg, formats):
            return  # a concurrent writer won the race with identical content (generation is deterministic)
    trash = final.with_name(f".{final.name}.old-{_owner()}-{time.time_ns()}")
    os.rename(final, trash)  # stale folder: move aside atomically, then publish ours
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_current(final, domain, cfg, formats):
            raise
    shutil.rmtree(trash, ignore_errors=True)


def generate(root: Path | str, domains: Sequence[str] = ("A", "B", "C", "D"), cfg: SynthConfig = SynthConfig(),
             formats: Sequence[str] = FORMATS, progress: bool = True, force: bool = False) -> Dict[str, dict]:
    """Generate several domains side by side under ``root``; returns {domain: manifest}."""
    if len(set(domains)) != len(domains):
        raise ValueError(f"duplicate domain names in {list(domains)}")
    return {d: generate_domain(root, d, cfg, formats, progress, force) for d in domains}
