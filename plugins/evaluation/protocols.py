"""Retrieval protocols: which gallery items count as matches and which are removed from a query's ranking.

All protocols follow fast-reid's compiled ranking (``fastreid/evaluation/rank_cylib/rank_cy.pyx``) for what it
defines; identities are compared as plain integers, so fast-reid's junk id -1 and Market's distractor id 0
are ordinary identities there (a gallery -1 or 0 item is a non-match for any other query id; fast-reid's
Market1501 reader already drops -1 images, and keeps distractors as id 0). We do the same.

- ``market``: remove gallery items with the query's id AND the query's camera (Market/Duke/MSMT17/VeRi...).
- ``cuhk03``: same removal, then CUHK03 classic single-gallery-shot CMC (one random item per gallery id, 10
  repeats, numpy's global RNG consumed exactly as fast-reid does); AP over the full kept ranking.
- ``msvr310``: remove items with the query's vehicle id AND the query's scene: pass scene ids as camids.
- ``text``: text-to-image retrieval (CUHK-PEDES, ICFG-PEDES, RSTPReid): nothing removed, camids unused,
  cosine features ranked by descending similarity; report R@1/5/10, mAP, mINP.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Protocol:
    name: str
    remove_same_camera: bool      # drop same-id items seen by the query's camera (scene for msvr310)
    single_gallery_shot: bool     # CUHK03 classic CMC
    rank_by_similarity: bool      # cosine: rank by -similarity (exact) rather than 1 - similarity
    default_max_rank: int


PROTOCOLS = {
    "market": Protocol("market", True, False, False, 50),
    "cuhk03": Protocol("cuhk03", True, True, False, 50),
    "msvr310": Protocol("msvr310", True, False, False, 50),
    "text": Protocol("text", False, False, True, 10),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown retrieval protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


class SameIdIndex:
    """Gallery items grouped by id, to list each query's same-id items without a (Q, G) comparison.

    Args:
        g_pids: (G,) int gallery ids.
        g_camids: (G,) int gallery cameras (or scenes), or None when the protocol removes nothing.
    """

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray | None):
        self.g_pids = np.asarray(g_pids, dtype=np.int64)
        self.g_camids = None if g_camids is None else np.asarray(g_camids, dtype=np.int64)
        self.order = np.argsort(self.g_pids, kind="stable")
        self.sorted_pids = self.g_pids[self.order]

    def lookup(self, q_pids: np.ndarray, q_camids: np.ndarray | None, remove_same_camera: bool):
        """Same-id gallery items of each query, padded: (idx, valid, present), each (b, S).

        ``valid``: a match kept by the protocol; ``present``: not padding. Padding repeats the first index.
        """
        q_pids = np.asarray(q_pids, dtype=np.int64)
        lo = np.searchsorted(self.sorted_pids, q_pids, side="left")
        hi = np.searchsorted(self.sorted_pids, q_pids, side="right")
        count = hi - lo
        width = max(1, int(count.max(initial=0)))
        col = np.arange(width)
        present = col[None, :] < count[:, None]
        flat = np.where(present, lo[:, None] + col[None, :], np.minimum(lo, len(self.order) - 1)[:, None])
        idx = self.order[flat] if len(self.order) else np.zeros_like(flat)
        valid = present.copy()
        if remove_same_camera:
            if q_camids is None or self.g_camids is None:
                raise ValueError("this protocol removes same-camera (same-scene) matches: camids are required")
            valid &= self.g_camids[idx] != np.asarray(q_camids, dtype=np.int64)[:, None]
        return idx, valid, present

    def valid_counts(self, q_pids, q_camids, remove_same_camera: bool, chunk: int = 4096) -> np.ndarray:
        """(Q,) number of valid matches per query; queries with 0 are skipped by every protocol."""
        out = [self.lookup(q_pids[s:s + chunk], None if q_camids is None else q_camids[s:s + chunk],
                           remove_same_camera)[1].sum(1) for s in range(0, len(q_pids), chunk)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def to_torch_lookup(idx, valid, present, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(idx).to(device), torch.from_numpy(valid).to(device),
            torch.from_numpy(present).to(device))
