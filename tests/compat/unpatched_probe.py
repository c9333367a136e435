"""Run in a fresh interpreter: reproduce, on the *unpatched* host, each failure plugins/compat prevents.

Usage: ``python unpatched_probe.py REPO_ROOT``; prints one JSON object ``{probe: {"error": type, "message": str,
...}}`` on its last line. ``plugins/__init__.py`` is never executed: a stub ``plugins`` package lets
``plugins.compat`` (base + import-time patches only) be imported without applying the runtime patches, so every
runtime probe below meets fast-reid exactly as shipped. Nothing is compiled or written outside a temp dir.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
import types


def _err(exc: BaseException) -> dict:
    return {"error": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else ""}


def _purge_fastreid() -> None:
    for name in [m for m in sys.modules if m == "fastreid" or m.startswith("fastreid.")]:
        del sys.modules[name]


def probe_import(results: dict) -> None:
    try:
        import fastreid.data  # noqa: F401
        results["import_bare"] = {"error": None}
    except Exception as exc:  # noqa: BLE001  (we record what the host raises)
        results["import_bare"] = _err(exc)
    _purge_fastreid()
    from plugins.compat import python_stdlib
    from plugins.compat.base import apply_patches

    torch_six = [p for p in python_stdlib.PATCHES if p.name == "torch_six"]
    apply_patches(torch_six, "import")  # only torch._six: the next failure is collections.Mapping
    try:
        import fastreid.data  # noqa: F401,F811
        results["import_torch_six_only"] = {"error": None}
    except Exception as exc:  # noqa: BLE001
        results["import_torch_six_only"] = _err(exc)
    _purge_fastreid()
    from plugins.compat import apply_import_patches

    apply_import_patches()
    import fastreid.data  # noqa: F401,F811
    import fastreid.engine  # noqa: F401
    import fastreid.evaluation  # noqa: F401
    results["import_patched"] = {"error": None}


def probe_dataloader(results: dict) -> None:
    import torch
    import fastreid.data.build as build

    try:
        loader = build.DataLoaderX(0, dataset=torch.utils.data.TensorDataset(torch.arange(4.0)), batch_size=2)
        next(iter(loader))
        results["dataloader"] = {"error": None}
    except Exception as exc:  # noqa: BLE001
        results["dataloader"] = _err(exc)


def probe_affine(results: dict) -> None:
    from fastreid.config import get_cfg
    from fastreid.data.transforms import build_transforms

    cfg = get_cfg()
    cfg.INPUT.AFFINE.ENABLED = True
    try:
        build_transforms(cfg, is_train=True)
        results["affine"] = {"error": None}
    except Exception as exc:  # noqa: BLE001
        results["affine"] = _err(exc)


def probe_evaluator(results: dict) -> None:
    from fastreid.config import get_cfg
    from fastreid.evaluation import ReidEvaluator

    calls = []
    real_run = subprocess.run

    def fake_run(args, *a, **k):  # record the compile instead of writing into site-packages
        calls.append(list(args))
        return subprocess.CompletedProcess(args, 2)

    subprocess.run = fake_run
    try:
        ReidEvaluator(get_cfg(), num_query=1)
        results["evaluator"] = {"error": None, "calls": calls}
    except SystemExit as exc:
        results["evaluator"] = {"error": "SystemExit", "message": str(exc.code), "calls": calls}
    finally:
        subprocess.run = real_run


def probe_checkpoint(results: dict, tmp: str) -> None:
    import numpy as np
    import torch
    from fastreid.utils.checkpoint import Checkpointer

    # fast-reid's own checkpoints carry numpy scalars (e.g. iteration counters); torch>=2.6's default refuses them
    path = os.path.join(tmp, "numpy_scalar.pth")
    torch.save({"model": {"w": torch.ones(2)}, "iteration": np.int64(7)}, path)
    try:
        Checkpointer(torch.nn.Linear(2, 2))._load_file(path)
        results["checkpoint_numpy"] = {"error": None}
    except Exception as exc:  # noqa: BLE001
        results["checkpoint_numpy"] = _err(exc)


def probe_ddp(results: dict, tmp: str) -> None:
    import torch
    import torch.distributed as dist
    import fastreid.engine.defaults as defaults

    dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp, "pg"), rank=0, world_size=1)
    try:
        defaults.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[0], broadcast_buffers=False)
        results["ddp"] = {"error": None}
    except Exception as exc:  # noqa: BLE001
        results["ddp"] = _err(exc)
    finally:
        dist.destroy_process_group()


def probe_launch(results: dict, tmp: str) -> None:
    import fastreid.engine.launch  # noqa: F401
    launch_mod = sys.modules["fastreid.engine.launch"]  # the package re-exports a *function* named launch

    ran = []
    try:
        launch_mod._distributed_worker(0, lambda: ran.append(1), 1, 1, 0, "file://" + os.path.join(tmp, "pg2"), ())
        results["launch"] = {"error": None, "ran": bool(ran)}
    except Exception as exc:  # noqa: BLE001
        results["launch"] = {**_err(exc), "ran": bool(ran)}


def main(repo_root: str) -> None:
    stub = types.ModuleType("plugins")
    stub.__path__ = [os.path.join(repo_root, "plugins")]
    sys.modules["plugins"] = stub
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for probe in (probe_import, probe_dataloader, probe_affine, probe_evaluator):
            try:
                probe(results)
            except Exception:  # noqa: BLE001  (a broken probe must show up as such, not as a host failure)
                results[probe.__name__] = {"probe_crashed": traceback.format_exc()}
        for probe in (probe_checkpoint, probe_ddp, probe_launch):
            try:
                probe(results, tmp)
            except Exception:  # noqa: BLE001
                results[probe.__name__] = {"probe_crashed": traceback.format_exc()}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
