"""What MoSAIC's evaluation adds to fast-reid's ReID metrics: the attribute head's accuracy per study attribute
(how often the predicted router picks exactly the oracle's experts) and how much identity information each study
attribute carries on a test set (its entropy over the identities: the ground truth a study can be checked
against on data whose identities are drawn from independent attributes, as the procedural data's are)."""
from __future__ import annotations

from collections import Counter
from typing import Dict, Sequence

import torch
from scipy.stats import entropy
from fastreid.utils import comm
from tabulate import tabulate
from tqdm import tqdm

from ..data.batch import ATTRIBUTES
from .schema import ExpertSchema

__all__ = ["attribute_accuracy", "accuracy_table", "identity_entropy"]


@torch.no_grad()
def attribute_accuracy(model, loader) -> Dict[str, Dict[str, float]]:
    """Per study attribute: ``{"accuracy": % of annotated samples whose predicted expert set equals the oracle's,
    "annotated": n, "majority": % of the most frequent expert set (the accuracy of always guessing it)}``. Under
    torch.distributed every rank must call it (the loader is sharded); every rank gets the totals."""
    schema: ExpertSchema = model.schema
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(schema.attributes))
    known_total = torch.zeros(len(schema.attributes))
    patterns = [Counter() for _ in schema.attributes]
    try:
        for batch in tqdm(loader, desc="attribute accuracy", disable=not comm.is_main_process(), leave=False):
            attributes = batch[ATTRIBUTES].to(model.device)
            truth = schema.active(attributes)
            predicted = model.predictor.decode(model.predictor.head(model.base_features(batch).cls))
            known = schema.known(attributes)
            for k, a in enumerate(schema.attributes):
                rows = known[:, k]
                same = (predicted[:, a.expert_slice] == truth[:, a.expert_slice]).all(1)
                correct[k] += float((same & rows).sum())
                known_total[k] += float(rows.sum())
                patterns[k].update(tuple(r) for r in truth[rows][:, a.expert_slice].int().tolist())
    finally:
        model.train(was_training)
    if comm.get_world_size() > 1:  # each rank saw its shard of the test loader: add the counts up
        shards = comm.all_gather((correct, known_total, patterns))
        correct = sum(c for c, _, _ in shards)
        known_total = sum(k for _, k, _ in shards)
        patterns = [sum((p[k] for _, _, p in shards), Counter()) for k in range(len(schema.attributes))]
    out = {}
    for k, a in enumerate(schema.attributes):
        n = float(known_total[k])
        top = patterns[k].most_common(1)[0][1] if patterns[k] else 0
        out[a.name] = {"accuracy": 100.0 * float(correct[k]) / n if n else float("nan"), "annotated": n,
                       "majority": 100.0 * top / n if n else float("nan")}
    return out


def accuracy_table(accuracy: Dict[str, Dict[str, float]]) -> str:
    rows = [[name, f"{v['accuracy']:.1f}", f"{v['majority']:.1f}", int(v["annotated"])] for name, v in accuracy.items()]
    return tabulate(rows, headers=["attribute", "accuracy (%)", "majority guess (%)", "annotated images"],
                    tablefmt="github")


def identity_entropy(items: Sequence[tuple], schema: ExpertSchema) -> Dict[str, float]:
    """Entropy (bits) of each study attribute's expert pattern over the distinct identities of ``items`` (reader
    items with ``extras["attributes"]``; pids <= 0 and images without attributes are skipped): how much knowing the
    attribute narrows down who a person is. Identities missing the attribute are left out of its count."""
    per_id: Dict = {}
    for item in items:
        extras = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        attrs = extras.get("attributes")
        pid = item[1]
        if attrs is None or (isinstance(pid, int) and pid <= 0):
            continue
        per_id.setdefault(pid, attrs)
    if not per_id:
        raise ValueError("identity_entropy: no item carries extras['attributes'] (an attribute reader's items?)")
    table = torch.tensor([list(v) for v in per_id.values()], dtype=torch.long)
    active, known = schema.active(table), schema.known(table)
    out = {}
    for k, a in enumerate(schema.attributes):
        rows = active[known[:, k]][:, a.expert_slice].int().tolist()
        counts = list(Counter(tuple(r) for r in rows).values())
        out[a.name] = float(entropy(counts, base=2)) if counts else 0.0
    return out
