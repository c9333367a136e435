"""Nothing unsafe loads, whatever the environment says: every ``torch.load`` of the process reads with
``weights_only=True`` once ``import plugins`` ran (``plugins/compat/checkpoint.py``, patch
``torch_load_weights_only``), including fast-reid's backbone loaders behind ``MODEL.BACKBONE.PRETRAIN_PATH``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

HOSTILE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch

    class Payload:
        def __reduce__(self):
            return (Path.touch, (Path(sys.argv[2]),))

    torch.save({"conv1.weight": torch.zeros(1), "payload": Payload()}, sys.argv[1])
""")

PROBE = textwrap.dedent("""
    import sys
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "bare":  # torch alone, as a library that calls torch.load without weights_only would
        import torch
        try:
            torch.load(path)
        except Exception as err:
            print("refused", type(err).__name__)
        sys.exit(0)
    import plugins
    from plugins.compat.checkpoint import UnsafeCheckpointError
    from plugins.config import setup_cfg
    from fastreid.modeling.backbones import build_backbone
    import torch
    if mode == "torch_load":
        calls = [lambda: torch.load(path), lambda: torch.load(path, weights_only=False)]
    else:
        cfg = setup_cfg(opts=["MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.DEPTH", "18x",
                              "MODEL.BACKBONE.PRETRAIN", "True", "MODEL.BACKBONE.PRETRAIN_PATH", path])
        calls = [lambda: build_backbone(cfg)]
    for call in calls:
        try:
            call()
            print("loaded")
        except UnsafeCheckpointError as err:
            assert path in str(err), str(err)
            print("refused UnsafeCheckpointError")
""")


def _run(tmp_path, mode: str) -> tuple:
    marker, bad = tmp_path / f"ran-{mode}", tmp_path / f"hostile-{mode}.pth"
    subprocess.run([sys.executable, "-c", HOSTILE, str(bad), str(marker)], check=True, timeout=120)
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(bad)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=str(REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split(), marker.exists()


def test_the_environment_variable_makes_plain_torch_load_unsafe(tmp_path):
    """The failure this guards against: with the variable set, torch runs the payload."""
    _, ran = _run(tmp_path, "bare")
    assert ran


def test_torch_load_refuses_even_when_asked_for_unsafe_loading(tmp_path):
    words, ran = _run(tmp_path, "torch_load")
    assert words.count("UnsafeCheckpointError") == 2 and "loaded" not in words
    assert not ran


def test_fastreid_backbone_pretrain_path_refuses(tmp_path):
    words, ran = _run(tmp_path, "backbone")
    assert "UnsafeCheckpointError" in words and not ran


def test_plain_checkpoints_still_load(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(2), "epoch": 3}, path)
    assert torch.load(path)["epoch"] == 3
