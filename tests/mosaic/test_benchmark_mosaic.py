"""Smoke test of tools/benchmark_mosaic.py on the tiny CLIP: the four rows and MoSAIC's exact added parameters."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import benchmark_mosaic  # noqa: E402

WIDTH, EXPERTS, RANK = 128, 35, 16  # tiny CLIP's image tower, Market-1501-attribute schema, MOSAIC.RANK
HEAD = WIDTH * EXPERTS + EXPERTS  # the predicted router's linear attribute head


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # --threads sets torch's global thread count
    yield
    torch.set_num_threads(threads)


def test_benchmark_mosaic_tiny(capsys):
    result = benchmark_mosaic.main(["--name", "tiny", "--ks", "1", "4", "--batch", "2", "--repeats", "1",
                                    "--warmup", "0", "--threads", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    labels = ["CLIP-ReID", "MoSAIC K=1 (oracle)", "MoSAIC K=4 (oracle)", "MoSAIC K=4 (predicted)"]
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [line.split("|")[1].strip() for line in table] == labels
    assert list(result) == ["clipreid", "k1", "k4", "k4_predicted"]
    last = out.strip().splitlines()[-1].split()
    assert last[:2] == ["mosaic", "model=tiny"]
    summary = dict(item.split("=") for item in last[1:])

    for key, k in (("k1", 1), ("k4", 4), ("k4_predicted", 4)):
        added = k * EXPERTS * 2 * RANK * WIDTH + HEAD
        assert result[key]["added_params"] == added
        assert result[key]["trainable"] == added  # only the experts + attribute head train
        assert summary[f"{key}_added_params"] == str(added)
    assert result["clipreid"]["added_params"] == 0
    # the experts map one pooled token each: 2 x (D x r) multiply-adds per expert and block, 2 FLOPs each; the
    # predicted router runs the tower twice (once without active experts, which still compute their tokens)
    flops = {key: r["gflops"] for key, r in result.items()}
    for key, k in (("k1", 1), ("k4", 4)):
        assert flops[key] - flops["clipreid"] == pytest.approx(k * EXPERTS * 2 * 2 * RANK * WIDTH / 1e9, rel=1e-6)
    assert flops["k4_predicted"] == pytest.approx(2 * flops["k4"], rel=1e-3)
    assert all(r["img_s"] > 0 for r in result.values())


def test_benchmark_mosaic_rejects_k_beyond_depth():
    with pytest.raises(ValueError, match=r"1\.\.4"):
        benchmark_mosaic.main(["--name", "tiny", "--ks", "12", "--repeats", "1", "--warmup", "0", "--threads", "1"])
