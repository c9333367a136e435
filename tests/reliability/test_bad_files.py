"""Broken files fail naming the file and saying what is wrong, in one line: truncated safetensors, bad
``adapter_config.json``, experts that contradict their own config or do not fit the model; SAGE warns about one
expert folder given for two sources."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from plugins.compat.checkpoint import CheckpointFormatError, read_safetensors
from plugins.config import setup_cfg
from plugins.sage.config import source_tags
from plugins.tuners.expert_bank import CONFIG_NAME, WEIGHTS_NAME, load_expert, load_expert_into, save_expert
from plugins.tuners.inject import inject_lora


def vit(width: int = 32):
    torch.manual_seed(0)
    return VisionTransformer(img_size=(32, 16), patch_size=8, embed_dim=width, depth=1, num_heads=2, mlp_ratio=2.0,
                             num_classes=0).eval()


@pytest.fixture
def expert(tmp_path):
    model = vit()
    inject_lora(model, rank=2, alpha=4)
    folder = tmp_path / "expert"
    save_expert(model, str(folder))
    return folder


def _truncate(folder):
    path = folder / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:100])


def _bad_json(folder):
    (folder / CONFIG_NAME).write_text("{ not json")


def _unknown_field(folder):
    raw = json.loads((folder / CONFIG_NAME).read_text())
    raw["r"] = "eight"
    raw["not_a_lora_field"] = 1
    (folder / CONFIG_NAME).write_text(json.dumps(raw))


def _rank_contradicts_config(folder):
    raw = json.loads((folder / CONFIG_NAME).read_text())
    raw["r"] = 4
    (folder / CONFIG_NAME).write_text(json.dumps(raw))


# (damage, exception, words the one-line message must hold besides the path)
CASES = {
    "truncated safetensors": (_truncate, CheckpointFormatError, [WEIGHTS_NAME, "not a readable safetensors"]),
    "adapter_config.json not JSON": (_bad_json, ValueError, [CONFIG_NAME, "not valid JSON"]),
    "adapter_config.json bad field": (_unknown_field, ValueError, [CONFIG_NAME]),
    "rank differs from its config": (_rank_contradicts_config, KeyError, ["r = 4", "lora_A"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_expert_folder_is_named(expert, case):
    damage, error, words = CASES[case]
    damage(expert)
    with pytest.raises(error) as err:
        load_expert(str(expert))
    message = str(err.value)
    assert str(expert) in message and all(w in message for w in words), message
    assert len(message.splitlines()) == 1


def test_expert_of_another_width_names_the_folder(expert):
    with pytest.raises(KeyError) as err:
        load_expert_into(vit(width=48), str(expert))
    message = str(err.value)
    assert str(expert) in message and "another width" in message and len(message.splitlines()) == 1


def test_read_safetensors_names_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        read_safetensors(str(tmp_path / "absent.safetensors"))
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="notes.safetensors"):
        read_safetensors(str(text))
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(2)}, str(good))
    assert torch.equal(read_safetensors(str(good))["w"], load_file(str(good))["w"])


def test_sage_warns_when_two_sources_share_an_expert_folder(expert, caplog):
    cfg = setup_cfg(freeze=False)
    cfg.SAGE.SOURCES = ("SynthReIDA", "SynthReIDB")
    cfg.SAGE.EXPERT_DIRS = (str(expert), str(expert) + "/")
    with caplog.at_level(logging.WARNING, logger="fastreid"):
        source_tags(cfg)
    assert "SAGE.EXPERT_DIRS[1] and [0] are the same" in caplog.text

