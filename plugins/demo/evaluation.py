"""DeMo's evaluation through the project's exact blockwise evaluator (``plugins.evaluation.evaluate_features``).

Protocols (``DEMO.TEST.PROTOCOL``): "market" removes same-id same-camera gallery items (RGBNT201, whose test
split is both query and gallery; RGBNT100), "msvr310" same-id same-SCENE items (scenes from the reader's items,
``extras["scene"]``). Features are the model's L2-normalised test features ranked by squared Euclidean distance.

Missing-modality evaluation (Tables 3-4): ``missing_modality_table`` sets each of M(R), M(N), M(T), M(RN), M(RT),
M(NT) on the model (the missing inputs are zeroed after normalisation, in query AND gallery), evaluates, and
averages; it trains nothing.
"""
from __future__ import annotations

import csv
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm
from tabulate import tabulate

from ..engine.loaders import make_test_loader
from ..engine.pseudo_label_hook import unwrap_model
from ..evaluation import evaluate_features
from .config import PROTOCOLS

__all__ = ["DeMoEvaluator", "dataset_test_loader", "extract", "evaluate_model", "MISSING_SETTINGS",
           "missing_modality_table", "write_missing_table"]

logger = logging.getLogger("fastreid." + __name__)

# Tables 3-4: setting name -> the modalities (indices in R, N, T order) that are missing.
MISSING_SETTINGS: Tuple[Tuple[str, Tuple[int, ...]], ...] = (
    ("M(R)", (0,)), ("M(N)", (1,)), ("M(T)", (2,)), ("M(RN)", (0, 1)), ("M(RT)", (0, 2)), ("M(NT)", (1, 2)))


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"DEMO.TEST.PROTOCOL must be one of {PROTOCOLS}, got {protocol!r}")


def _removal_ids(items: Sequence[tuple], protocol: str) -> np.ndarray:
    """The per-item ids the protocol compares besides the pid: cameras (market) or scenes (msvr310)."""
    if protocol == "msvr310":
        scenes = [(it[3] if len(it) > 3 and isinstance(it[3], dict) else {}).get("scene") for it in items]
        if any(s is None for s in scenes):
            raise ValueError("DEMO.TEST.PROTOCOL 'msvr310' needs extras['scene'] on every test item (the MSVR310 "
                             "reader's items carry it)")
        return np.asarray(scenes, dtype=np.int64)
    return np.asarray([int(it[2]) for it in items], dtype=np.int64)


class DeMoEvaluator(DatasetEvaluator):
    """fast-reid evaluator: collects features in loader order; ``evaluate`` ranks with the exact blockwise
    evaluator under ``protocol``. ``pids`` / ``removal_ids``: (Q + G,) from the reader's items, in order."""

    def __init__(self, num_query: int, pids: np.ndarray, removal_ids: np.ndarray, *, protocol: str = "market",
                 device: str = "cpu"):
        _check_protocol(protocol)
        self.num_query, self.pids, self.removal_ids = int(num_query), np.asarray(pids), np.asarray(removal_ids)
        self.protocol, self.device = protocol, device
        self.reset()

    def reset(self):
        self._feats: List[torch.Tensor] = []

    def process(self, inputs, outputs):
        self._feats.append(outputs.detach().float().cpu())

    def evaluate(self):
        parts = self._feats
        if comm.get_world_size() > 1:
            comm.synchronize()
            parts = [f for rank in comm.gather(self._feats) for f in rank]
            if not comm.is_main_process():
                return {}
        feats = torch.cat(parts)
        feats = feats[: len(self.pids)]  # the inference sampler may pad the last batch
        nq = self.num_query
        res = evaluate_features(feats[:nq], feats[nq:], self.pids[:nq], self.pids[nq:], self.removal_ids[:nq],
                                self.removal_ids[nq:], metric="euclidean", protocol=self.protocol, max_rank=50,
                                device=self.device, progress=False)
        if res.num_skipped:
            logger.info(f"{res.num_skipped} of {res.num_query} queries have no valid match and are skipped")
        return res.fastreid_results()


def dataset_test_loader(cfg, dataset_name: str):
    """(loader over query + gallery of a registered dataset, DeMoEvaluator for it)."""
    protocol = cfg.DEMO.TEST.PROTOCOL
    _check_protocol(protocol)
    data = DATASET_REGISTRY.get(dataset_name)(root=os.getenv("FASTREID_DATASETS", "datasets"))
    if comm.is_main_process():
        data.show_test()
    items = list(data.query) + list(data.gallery)
    loader, num_query = make_test_loader(cfg, data.query, data.gallery)
    pids = np.asarray([int(it[1]) for it in items], dtype=np.int64)
    device = "cuda" if str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available() else "cpu"
    return loader, DeMoEvaluator(num_query, pids, _removal_ids(items, protocol), protocol=protocol, device=device)


@torch.no_grad()
def extract(model, loader) -> torch.Tensor:
    """Test features of every item of ``loader`` in order (N, D) (this process's shard)."""
    was_training = model.training
    model.eval()
    out = [model(batch).float().cpu() for batch in loader]
    model.train(was_training)
    return torch.cat(out)


def evaluate_model(cfg, model, dataset_name: Optional[str] = None, *, loader_and_evaluator=None) -> Dict[str, float]:
    """Metrics (percent: Rank-1/5/10, mAP, mINP) of ``model`` on ``dataset_name`` (default DATASETS.TESTS[0])."""
    loader, evaluator = loader_and_evaluator or dataset_test_loader(cfg, dataset_name or cfg.DATASETS.TESTS[0])
    evaluator.reset()
    evaluator.process(None, extract(model, loader))
    return dict(evaluator.evaluate())


def missing_modality_table(cfg, model, dataset_name: Optional[str] = None) -> "OrderedDict[str, Dict[str, float]]":
    """{setting: {"mAP", "Rank-1"}} for the full input, M(R) .. M(NT) and their average ("Average", over the six
    missing settings). The model's own ``missing`` setting is restored afterwards."""
    inner = unwrap_model(model)
    saved = inner.missing
    loader_and_evaluator = dataset_test_loader(cfg, dataset_name or cfg.DATASETS.TESTS[0])
    rows: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    try:
        for name, idx in (("Full", ()),) + MISSING_SETTINGS:
            inner.set_missing([inner.modalities[i] for i in idx])
            res = evaluate_model(cfg, model, loader_and_evaluator=loader_and_evaluator)
            rows[name] = {"mAP": float(res["mAP"]), "Rank-1": float(res["Rank-1"])}
            logger.info(f"missing-modality {name}: mAP {res['mAP']:.2f}, Rank-1 {res['Rank-1']:.2f}")
    finally:
        inner.set_missing(saved)
    settings = [n for n, _ in MISSING_SETTINGS]
    rows["Average"] = {m: float(np.mean([rows[s][m] for s in settings])) for m in ("mAP", "Rank-1")}
    return rows


def write_missing_table(rows: Dict[str, Dict[str, float]], directory: str, title: str = "") -> str:
    """Write ``missing_modality.csv`` and ``.md`` under ``directory``; returns the Markdown table."""
    table = tabulate([[n, f"{r['mAP']:.2f}", f"{r['Rank-1']:.2f}"] for n, r in rows.items()],
                     headers=["setting", "mAP", "Rank-1"], tablefmt="github")
    if comm.is_main_process():
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "missing_modality.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["setting", "mAP", "Rank-1"])
            for n, r in rows.items():
                w.writerow([n, f"{r['mAP']:.4f}", f"{r['Rank-1']:.4f}"])
        with open(os.path.join(directory, "missing_modality.md"), "w") as f:
            f.write((f"# {title}\n\n" if title else "") + table + "\n")
    return table
