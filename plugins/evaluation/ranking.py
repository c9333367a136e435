"""Exact per-query ranking metrics (CMC first hit, AP, INP) from a block of distance rows, without sorting rows.

For a query, only the ranks of its valid matches matter: the rank of the k-th match (in ranking order) is
``k + (number of non-matches ranked before it)``. A row is ranked by ascending distance with ties broken by
gallery index (a stable sort of the row: the documented deterministic tie order of this package). So a
non-match j precedes a match m iff ``(d_j, j) < (d_m, m)``, which we test on one packed int64 key
``row | order-preserving float bits | gallery index``. Only non-matches not farther than the query's last match
can precede a match, so just those "candidates" are keyed and counted (one compare pass over the block plus
work on the few candidates), instead of an O(G log G) sort per query as in fast-reid's Cython ranking.

Why not faiss / torch.topk: AP and mINP need the rank of every valid match in the whole gallery, which a
top-k search does not give; the distance itself is a plain GEMM (torch, CPU or GPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_FLOAT_BITS = 32


@dataclass
class BlockRanks:
    """Ranks of the valid matches of a block of queries (every query has >= 1 valid match).

    ``pos``: (total_matches,) int64, 0-based rank of each valid match in the query's ranking after removal,
    grouped by query (row-major) and ascending within a query; ``num_matches``: (b,) valid matches per query;
    ``num_kept``: (b,) gallery size after removal.
    """
    pos: np.ndarray
    num_matches: np.ndarray
    num_kept: np.ndarray

    def first_hit(self) -> np.ndarray:
        """(b,) rank of the first valid match."""
        return self.pos[self._starts()]

    def average_precision(self) -> np.ndarray:
        """(b,) AP = mean over the query's matches of (k + 1) / (rank_k + 1), float64."""
        k = np.arange(self.pos.size) - np.repeat(self._starts(), self.num_matches)
        prec = (k + 1.0) / (self.pos + 1.0)
        return np.add.reduceat(prec, self._starts()) / self.num_matches

    def inverse_negative_penalty(self) -> np.ndarray:
        """(b,) INP = num_matches / (rank of the last match + 1), float64."""
        last = self.pos[self._starts() + self.num_matches - 1]
        return self.num_matches / (last + 1.0)

    def _starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.num_matches)[:-1])).astype(np.int64)


def orderable_float_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 tensor -> int64 in [0, 2**32) with the same total order (ties stay ties; -0.0 == 0.0)."""
    bits = (x.to(torch.float32) + 0.0).contiguous().view(torch.int32).to(torch.int64)  # + 0.0: -0.0 -> 0.0
    return torch.where(bits >= 0, bits + (1 << 31), -1 - bits)


def rank_matches(dist: torch.Tensor, same_idx: torch.Tensor, same_valid: torch.Tensor,
                 same_present: torch.Tensor, max_candidates: int = 1 << 24) -> BlockRanks:
    """Exact ranks of the valid matches of each row.

    Args:
        dist: (b, G) float distances, ascending = better. Overwritten in place (same-id entries set to +inf).
        same_idx: (b, S) int64 gallery indices sharing the query's id (padded with any index of that set).
        same_valid: (b, S) bool, True for a valid match (same id, kept by the protocol); every row has one.
        same_present: (b, S) bool, True where ``same_idx`` is a real entry (not padding); removed items
            are present and not valid.
        max_candidates: candidates keyed at once (bounds the int64 work arrays).
    """
    b, num_g = dist.shape
    dev = dist.device
    idx_bits = max(1, int(num_g - 1).bit_length())
    row_bits = max(1, int(b - 1).bit_length())
    if row_bits + _FLOAT_BITS + idx_bits > 63:
        raise ValueError(f"block of {b} rows x {num_g} gallery items does not fit the int64 rank key; "
                         "use a smaller block size")

    match_d = dist.gather(1, same_idx)                                          # (b, S)
    if not bool(torch.isfinite(match_d[same_valid]).all()):
        raise ValueError("non-finite distance to a valid match (NaN/inf in the features or distances?)")
    num_matches = same_valid.sum(1)                                             # (b,)
    if bool((num_matches == 0).any()):
        raise ValueError("rank_matches needs at least one valid match per row; filter invalid queries first")
    last_d = torch.where(same_valid, match_d, torch.full_like(match_d, -float("inf"))).amax(1)
    num_kept = num_g - (same_present & ~same_valid).sum(1)
    dist.scatter_(1, same_idx, float("inf"))                                    # same-id items: never candidates

    # Match keys, sorted; one sentinel per row (the largest key of the row) so that each row owns
    # num_matches + 1 consecutive slots in the flat sorted key table.
    rows = torch.arange(b, device=dev).unsqueeze(1).expand_as(same_idx)
    row_shift, val_shift = _FLOAT_BITS + idx_bits, idx_bits
    m_keys = (rows[same_valid] << row_shift) | (orderable_float_bits(match_d[same_valid]) << val_shift) \
        | same_idx[same_valid]
    sentinel = (torch.arange(b, device=dev) << row_shift) | ((1 << row_shift) - 1)
    table, _ = torch.sort(torch.cat([m_keys, sentinel]))
    slot_start = torch.cumsum(num_matches + 1, 0) - (num_matches + 1)           # (b,) first slot of each row

    counts = torch.zeros(table.numel(), dtype=torch.int64, device=dev)
    cand_r, cand_c = (dist <= last_d.unsqueeze(1)).nonzero(as_tuple=True)     # possible predecessors
    for s in range(0, cand_r.numel(), max_candidates):                      # bounded work arrays
        r, c = cand_r[s:s + max_candidates], cand_c[s:s + max_candidates]
        keys = (r << row_shift) | (orderable_float_bits(dist[r, c]) << val_shift) | c
        counts += torch.bincount(torch.searchsorted(table, keys), minlength=table.numel())

    # before[slot] = candidates of the row with a key below that slot's match key.
    csum = torch.cumsum(counts, 0)
    before = csum - torch.repeat_interleave(csum[slot_start] - counts[slot_start], num_matches + 1)
    k_in_row = torch.arange(table.numel(), device=dev) - torch.repeat_interleave(slot_start, num_matches + 1)
    is_match = k_in_row < torch.repeat_interleave(num_matches, num_matches + 1)
    pos = (k_in_row + before)[is_match]
    return BlockRanks(pos=pos.cpu().numpy(), num_matches=num_matches.cpu().numpy(),
                      num_kept=num_kept.cpu().numpy())
