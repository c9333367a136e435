"""The results tables name the networks the config trains (MOEKD.BASE_DEPTH, MOEKD.STUDENT.DEPTH)."""
from __future__ import annotations

from plugins.moekd.pipeline import resnet_name, row_labels


def test_labels_follow_the_configured_depths(make_cfg):
    assert resnet_name("18x") == "ResNet-18" and resnet_name("101x") == "ResNet-101"
    paper = row_labels(make_cfg())  # MOEKD.BASE_DEPTH 50x, MOEKD.STUDENT.DEPTH 18x (Table 5)
    assert paper["base"] == "Base Model (ResNet-50)" and paper["kd"] == "+ KD (ResNet-18 student)"
    demo = row_labels(make_cfg(MOEKD__BASE_DEPTH="18x", MOEKD__STUDENT__DEPTH="34x"))
    assert demo["base"] == "Base Model (ResNet-18)" and demo["kd"] == "+ KD (ResNet-34 student)"
    assert list(demo) == ["base", "clip_concat", "align_average", "moe", "kd"]
