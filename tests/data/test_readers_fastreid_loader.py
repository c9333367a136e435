"""The plugin readers go through fast-reid's own loader builders (multi-dataset training, test loader)."""
import fastreid.data.build as fastreid_build
from fastreid.config import get_cfg
from fastreid.data import build_reid_test_loader, build_reid_train_loader


def _cfg():
    cfg = get_cfg()
    cfg.DATASETS.NAMES = ("Market1501Attribute", "CUHKPEDES")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.DATALOADER.NUM_INSTANCE = 2
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.INPUT.SIZE_TEST = [64, 32]
    cfg.TEST.IMS_PER_BATCH = 8
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_multi_dataset_train_and_test_loaders(shared_data, monkeypatch):
    monkeypatch.setattr(fastreid_build, "_root", str(shared_data))  # fast-reid reads FASTREID_DATASETS at import
    loader = build_reid_train_loader(_cfg())
    # 16 Market ids + 1 CUHK-PEDES id; 6 + 1 cameras: prefixed labels keep the two datasets apart
    assert (loader.dataset.num_classes, loader.dataset.num_cameras) == (17, 7)
    batch = next(iter(loader))
    assert tuple(batch["images"].shape) == (8, 3, 64, 32) and int(batch["targets"].max()) < 17
    test_loader, num_query = build_reid_test_loader(_cfg(), dataset_name="Market1501Attribute", num_workers=0)
    assert num_query == 32 and len(test_loader.dataset) == 64
