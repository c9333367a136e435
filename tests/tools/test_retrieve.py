"""tools/retrieve.py and tools/export_onnx.py end to end: procedural galleries with tiny random models, and the real
Market-1501 sample with the real OSNet x0.25 checkpoint converted by tools/convert_weights.py."""
from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "inference"))
from inference_models import SIZE, make_cfg, save_checkpoint, write_images  # noqa: E402

LAST = re.compile(r"^retrieve queries=(\d+) gallery=(\d+) seconds=([\d.]+)$")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"plugins_test_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


retrieve = _tool("retrieve")
export_onnx = _tool("export_onnx")


def _config(cfg, path) -> str:
    path.write_text(cfg.dump())
    return str(path)


@pytest.fixture(scope="module")
def osnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieve")
    cfg = make_cfg("osnet")
    write_images(root / "gallery", [(p, c) for p in range(1, 7) for c in (1, 2, 3)], seed=1)
    write_images(root / "query", [(p, 4) for p in range(1, 4)], seed=2)
    return root, _config(cfg, root / "osnet.yml"), save_checkpoint(cfg, root / "osnet.pth")


def _last_line(out: str):
    line = out.strip().splitlines()[-1]
    m = LAST.match(line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def _cli_args(osnet, out):
    root, config, weights = osnet
    return ["--config-file", config, "--weights", weights, "--gallery", str(root / "gallery"), "--query",
            str(root / "query"), "--topk", "4", "--out", str(out)]


@pytest.mark.slow
def test_cli_subprocess(osnet, tmp_path):
    """The command line as a user runs it (a fresh interpreter importing every method: slow on 2 cores)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "retrieve.py"), *_cli_args(osnet, out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _last_line(proc.stdout) == (3, 18)
    assert (out / "ranking.png").is_file() and (out / "ranking.csv").is_file()


def test_cli_writes_png_csv_and_last_line(osnet, tmp_path, capsys):
    out = tmp_path / "out"
    retrieve.main(_cli_args(osnet, out))
    assert _last_line(capsys.readouterr().out) == (3, 18)
    rows = list(csv.DictReader(open(out / "ranking.csv")))
    assert len(rows) == 3 * 4 and list(rows[0]) == ["query", "rank", "score", "path", "id"]
    assert [r["rank"] for r in rows[:4]] == ["1", "2", "3", "4"]
    scores = [float(r["score"]) for r in rows[:4]]
    assert scores == sorted(scores, reverse=True)
    from PIL import Image
    with Image.open(out / "ranking.png") as im:
        assert im.size[0] > 200 and im.size[1] > 100
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    green = np.array([0x1a, 0x96, 0x41])
    assert (np.abs(pixels - green).sum(1) < 30).sum() > 100  # identities known: green frames drawn


def test_rerun_embeds_only_new_images_and_options(osnet, tmp_path, capsys):
    root, config, weights = osnet
    gallery, out = tmp_path / "gallery", tmp_path / "out"
    write_images(gallery, [(p, c) for p in range(1, 7) for c in (1, 2)], seed=3)
    base = ["--config-file", config, "--weights", weights, "--gallery", str(gallery), "--out", str(out),
            "--topk", "5"]
    retrieve.main(base + ["--query", str(root / "query" / "0001_c4s1_000000_00.png")])
    first = capsys.readouterr().out
    assert "12 embedded" in first and _last_line(first) == (1, 12)
    write_images(gallery / "more", [(7, 1), (7, 2)], seed=4)
    result = retrieve.main(base + ["--query", str(root / "query"), "--rerank", "TEST.RERANK.K1", "6",
                                   "TEST.RERANK.K2", "2"])
    second = capsys.readouterr().out
    assert "14 images, 2 embedded" in second and _last_line(second) == (3, 14)
    assert result["ranking"].indices.shape == (3, 5)
    exact = retrieve.main(base + ["--query", str(root / "query")])["ranking"]
    flat = retrieve.main(base + ["--query", str(root / "query"), "--search", "flat"])["ranking"]
    np.testing.assert_array_equal(flat.indices, exact.indices)
    retrieve.main(base + ["--query", str(root / "query"), "--search", "hnsw"])
    assert re.search(r"faiss hnsw recall@5 vs exact: [01]\.\d{4}", capsys.readouterr().out)


def test_sentence_query_with_text_image_model(osnet, tmp_path, capsys):
    root, _, _ = osnet
    from plugins.config import setup_cfg

    cfg = setup_cfg(str(REPO / "configs" / "dmadapter" / "demo.yml"),
                    SIZE + ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False"])
    config, weights = _config(cfg, tmp_path / "dm.yml"), save_checkpoint(cfg, tmp_path / "dm.pth")
    out = tmp_path / "out"
    retrieve.main(["--config-file", config, "--weights", weights, "--gallery", str(root / "gallery"),
                   "--query", "a woman in a red coat with a black bag", "--topk", "3", "--out", str(out)])
    assert _last_line(capsys.readouterr().out) == (1, 18)
    rows = list(csv.DictReader(open(out / "ranking.csv")))
    assert len(rows) == 3 and rows[0]["query"] == "a woman in a red coat with a black bag"
    assert (out / "ranking.png").stat().st_size > 0


def test_sentence_refused_for_clipreid_features(osnet, tmp_path):
    root, _, _ = osnet
    cfg = make_cfg("clip")
    with pytest.raises(ValueError, match="not in its text space"):
        retrieve.main(["--config-file", _config(cfg, tmp_path / "c.yml"), "--weights",
                       save_checkpoint(cfg, tmp_path / "c.pth"), "--gallery", str(root / "gallery"),
                       "--query", "a man", "--out", str(tmp_path / "out")])


def test_export_cli_last_line(osnet, tmp_path, capsys):
    root, config, weights = osnet
    export_onnx.main(["--config-file", config, "--weights", weights, "--output", str(tmp_path / "m.onnx"),
                      "--images", str(root / "gallery")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.match(r"^onnx parity max_abs=(\S+)$", line)
    assert m and float(m.group(1)) < 1e-4


@pytest.fixture(scope="module")
def real_osnet(tmp_path_factory, shared_data):
    """The real torchreid OSNet x0.25 Market-1501 checkpoint, converted by tools/convert_weights.py."""
    src = shared_data / "weights" / "osnet_x0_25_market1501.pt"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    out = tmp_path_factory.mktemp("osnet") / "osnet_fastreid.pth"
    tool = _tool("convert_weights")
    config = str(REPO / "configs" / "base" / "osnet_x0_25_market_eval.yml")
    assert tool.main(["--from", "torchreid-osnet", "--input", str(src), "--output", str(out),
                      "--config-file", config]) == 0
    return config, str(out)


def test_real_market_worst_queries_and_export(real_osnet, shared_data, tmp_path, capsys, monkeypatch):
    config, weights = real_osnet
    monkeypatch.setenv("FASTREID_DATASETS", str(shared_data))
    out = tmp_path / "out"
    retrieve.main(["--config-file", config, "--weights", weights, "--dataset", "Market1501", "--worst", "--num",
                   "3", "--topk", "5", "--out", str(out)])
    text = capsys.readouterr().out
    m = re.search(r"Market1501: mAP ([\d.]+)% over (\d+) queries; worst 3 shown", text)
    assert m and float(m.group(1)) > 50  # real weights on real images: far above chance
    assert _last_line(text)[0] == 3
    rows = list(csv.DictReader(open(out / "ranking.csv")))
    assert len(rows) == 15 and all(r["id"] for r in rows)

    monkeypatch.chdir(tmp_path)
    export_onnx.main(["--config-file", config, "--weights", weights, "--output", str(tmp_path / "osnet.onnx"),
                      "--images", str(shared_data / "Market-1501-v15.09.15" / "query"), "--num-images", "8"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(re.match(r"^onnx parity max_abs=(\S+)$", line).group(1)) < 1e-4
