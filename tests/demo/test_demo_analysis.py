"""The analysis outputs: gate-weight CSV (one row per instance, weights per head and feature summing to 1 per head)
and PNGs; the t-SNE plot of features coloured by identity."""
from __future__ import annotations

import csv

import torch

from plugins.demo.analysis import feature_names, write_gate_weights, write_tsne


def test_gate_weight_csv_and_plot(tmp_path):
    torch.manual_seed(0)
    gate = torch.softmax(torch.randn(6, 4, 7), dim=-1)
    items = [(f"img{i}.jpg", i // 2, i % 3) for i in range(6)]
    paths = write_gate_weights(gate, items, str(tmp_path))
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[3]["img_path"] == "img3.jpg"
    names = feature_names(7)
    assert names == ("D_R", "D_N", "D_T", "D_RN", "D_RT", "D_NT", "D_RNT")
    for h in range(4):
        assert abs(sum(float(rows[0][f"h{h}_{n}"]) for n in names) - 1) < 1e-5
    assert abs(float(rows[0]["mean_D_NT"]) - float(gate[0, :, 5].mean())) < 1e-5
    assert (tmp_path / "atmoe_weights.png").stat().st_size > 1000


def test_tsne_plot(tmp_path):
    torch.manual_seed(0)
    feats = torch.randn(30, 16) + torch.arange(3).repeat_interleave(10)[:, None] * 3
    path = write_tsne(feats, [i // 10 for i in range(30)], str(tmp_path / "tsne.png"), max_ids=2)
    assert (tmp_path / "tsne.png").stat().st_size > 1000 and path.endswith("tsne.png")
