"""The plugin readers read what the procedural generator (plugins/data/synthetic) writes."""
import os

import pytest

from plugins.data.datasets.attribute_base import UNKNOWN
from plugins.data.datasets.cuhk_pedes import CUHKPEDES
from plugins.data.datasets.market_attribute import Market1501Attribute
from plugins.data.datasets.multimodal_base import MODALITIES, load_modalities
from plugins.data.datasets.rgbnt201 import RGBNT201

synthetic = pytest.importorskip("plugins.data.synthetic", reason="the synthetic generator package is not available")
if not all(hasattr(synthetic, n) for n in ("SynthConfig", "generate_domain", "FORMATS")):
    pytest.skip("the synthetic generator API (SynthConfig, generate_domain, FORMATS) is not there yet",
                allow_module_level=True)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    formats = [f for f in ("market", "market_attribute", "rgbnt201", "cuhk_pedes") if f in synthetic.FORMATS]
    if len(formats) < 4:
        pytest.skip(f"generator lacks formats: has {synthetic.FORMATS}")
    cfg = synthetic.SynthConfig(seed=3, train_ids=3, test_ids=4, images_per_id=6, num_cameras=3, height=32,
                                width=16, junk=1, distractors=1)
    root = tmp_path_factory.mktemp("synth")
    synthetic.generate_domain(root, "A", cfg, formats=formats, progress=False)
    (folder,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder, cfg


def test_market_attribute_reads_generator_output(domain):
    folder, cfg = domain
    d = Market1501Attribute(root=str(folder))
    assert d.get_num_pids(d.train) == cfg.train_ids and len(d.train) == cfg.train_ids * cfg.images_per_id
    assert all(len(it[3]["attributes"]) == 27 and UNKNOWN not in it[3]["attributes"] for it in d.train)
    distractors = [it for it in d.gallery if it[1] == 0]
    assert len(distractors) == cfg.distractors and distractors[0][3]["attributes"] == (UNKNOWN,) * 27
    assert all(it[1] != -1 for it in d.gallery)  # junk dropped by default, as fast-reid's Market1501
    assert {it[1] for it in d.query} <= {it[1] for it in d.gallery}


def test_rgbnt201_reads_generator_output(domain):
    folder, cfg = domain
    d = RGBNT201(root=str(folder))
    assert d.get_num_pids(d.train) == cfg.train_ids and d.query == d.gallery
    imgs = load_modalities(d.query[0][3])
    assert [imgs[m].size for m in MODALITIES] == [(cfg.width, cfg.height)] * 3


def test_cuhk_pedes_reads_generator_output(domain):
    folder, _ = domain
    d = CUHKPEDES(root=str(folder))
    assert len(d.train) > 0 and all(isinstance(it[3]["caption"], str) for it in d.train)
    assert len(d.query) >= len(d.gallery) > 0 and {q[1] for q in d.query} == {g[1] for g in d.gallery}
    assert all(os.path.isfile(g[0]) for g in d.gallery)


def test_synthetic_attribute_reader_generates_and_matches_market_attribute(tmp_path):
    from plugins.data.datasets.synthetic import SynthReIDA
    from plugins.data.datasets.synthetic_attribute import SynthReIDAttrA

    cfg = synthetic.SynthConfig(seed=5, train_ids=3, test_ids=3, images_per_id=4, num_cameras=2, height=32,
                                width=16, junk=1, distractors=1)
    plain = SynthReIDA(root=str(tmp_path), config=cfg)  # writes the Market layout only
    d = SynthReIDAttrA(root=str(tmp_path), config=cfg)  # adds market_attribute.mat, keeps the same images
    assert sorted(it[0] for it in d.train) == sorted(it[0] for it in plain.train)
    assert d.dataset_name == "synthreidattra" and d.train[0][1].startswith("synthreidattra_")
    ref = Market1501Attribute(root=str(tmp_path / "synthreid" / "A"))
    assert [it[3] for it in d.gallery] == [it[3] for it in ref.gallery]
    assert [(it[0], it[1]) for it in d.query] == [(it[0], it[1]) for it in ref.query]
