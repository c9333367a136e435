"""The synthetic data is learnable and has real domain shift: a short fast-reid Baseline run on domain A ranks A's
query/gallery far above chance, and clearly worse on domain B (cameras, style and identities all differ)."""
import cv2
import numpy as np
import pytest
import torch

from plugins.data.synthetic import SynthConfig, generate

CFG = SynthConfig(seed=0, train_ids=32, test_ids=24, images_per_id=6, num_cameras=3, height=64, width=32,
                  junk=2, distractors=2)


def _load(dataset):
    imgs = np.stack([cv2.imread(p)[..., ::-1] for p, _, _ in dataset])
    return torch.from_numpy(imgs.copy()).permute(0, 3, 1, 2).float()


def _rank(model, ds, max_rank=10):
    from fastreid.evaluation.rank import evaluate_rank

    model.eval()
    with torch.no_grad():
        q = torch.nn.functional.normalize(model({"images": _load(ds.query)}), dim=1)
        g = torch.nn.functional.normalize(model({"images": _load(ds.gallery)}), dim=1)
    qp, qc = np.array([p for _, p, _ in ds.query]), np.array([c for _, _, c in ds.query])
    gp, gc = np.array([p for _, p, _ in ds.gallery]), np.array([c for _, _, c in ds.gallery])
    cmc, all_ap, _ = evaluate_rank((1 - q @ g.T).numpy(), qp, gp, qc, gc, max_rank=max_rank, use_cython=False)
    rng = np.random.default_rng(0)
    _, chance_ap, _ = evaluate_rank(rng.random((len(qp), len(gp))), qp, gp, qc, gc, max_rank=max_rank,
                                    use_cython=False)
    return float(np.mean(all_ap)), float(cmc[0]), float(np.mean(chance_ap))


@pytest.mark.slow
def test_trained_on_a_far_above_chance_and_lower_on_b(tmp_path):
    from fastreid.config import get_cfg
    from fastreid.data.datasets import DATASET_REGISTRY
    from fastreid.modeling import build_model
    from fastreid.utils.events import EventStorage

    torch.manual_seed(0)
    torch.set_num_threads(2)  # the 2-core budget of the test suite
    generate(tmp_path / "synthreid", ("A", "B"), CFG, formats=("market",), progress=False)
    dom_a = DATASET_REGISTRY.get("SynthReIDA")(root=str(tmp_path), config=CFG)
    dom_b = DATASET_REGISTRY.get("SynthReIDB")(root=str(tmp_path), config=CFG)

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.DEPTH = "build_resnet_backbone", "18x"
    cfg.MODEL.BACKBONE.FEAT_DIM, cfg.MODEL.BACKBONE.LAST_STRIDE, cfg.MODEL.BACKBONE.PRETRAIN = 512, 1, False
    cfg.MODEL.HEADS.WITH_BNNECK, cfg.MODEL.HEADS.NUM_CLASSES = True, CFG.train_ids
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    cfg.MODEL.LOSSES.CE.EPSILON, cfg.MODEL.LOSSES.TRI.HARD_MINING = 0.1, True
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)

    images = _load(dom_a.train)
    labels = {p: i for i, p in enumerate(sorted({p for _, p, _ in dom_a.train}))}
    targets = torch.tensor([labels[p] for _, p, _ in dom_a.train])
    by_id = [torch.nonzero(targets == i).ravel() for i in range(len(labels))]
    rng = np.random.default_rng(0)
    with EventStorage(0):
        for it in range(40):  # P=8 identities x K=4 images, horizontal flips
            model.train()
            ids = rng.choice(len(by_id), 8, replace=False)
            idx = torch.cat([by_id[i][torch.from_numpy(rng.choice(len(by_id[i]), 4, replace=False))] for i in ids])
            x = images[idx]
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip] = x[flip].flip(-1)
            losses = model({"images": x, "targets": targets[idx]})
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

    map_a, r1_a, chance_a = _rank(model, dom_a)
    map_b, r1_b, chance_b = _rank(model, dom_b)
    print(f"in-domain A: mAP {map_a:.3f} R1 {r1_a:.3f} (chance mAP {chance_a:.3f}); "
          f"cross-domain B: mAP {map_b:.3f} R1 {r1_b:.3f} (chance {chance_b:.3f})")
    assert map_a > 3 * chance_a and map_a > 0.4
    assert map_b < map_a - 0.1
