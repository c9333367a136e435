"""CMC accumulators reproducing fast-reid's compiled ranking (``rank_cy.pyx``) bit for bit.

Two details of the compiled code are kept on purpose, so that reported numbers stay comparable with
fast-reid:

- Market-style CMC reuses one per-query buffer of gallery length: when a query keeps fewer than ``max_rank``
  gallery items, its CMC entries past its kept list are whatever the last valid query that reached that
  rank left there (initially 0). This only happens with tiny galleries; the pure-Python fallback crashes
  there instead (ragged arrays).
- CUHK03 single-gallery-shot CMC is 0 past the number of sampled gallery ids, accumulates 1/10 per repeat in
  float32, and sums queries in order in float32.
"""
from __future__ import annotations

import numpy as np


class MarketCmc:
    """Sum of 0/1 CMC rows of valid queries, fed in query order. ``value()``: (max_rank,) float32."""

    def __init__(self, max_rank: int):
        self.max_rank = max_rank
        self.total = np.zeros(max_rank, dtype=np.int64)
        self.buffer = np.zeros(max_rank, dtype=np.int64)     # the compiled code's reused row buffer
        self.num_valid = 0

    def add(self, first_hit: np.ndarray, num_kept: np.ndarray) -> None:
        """first_hit, num_kept: (b,) rank of the first valid match and kept gallery size of b valid queries."""
        first_hit = np.asarray(first_hit, dtype=np.int64)
        num_kept = np.asarray(num_kept, dtype=np.int64)
        if first_hit.size == 0:
            return
        ranks = np.arange(self.max_rank)
        if (num_kept >= self.max_rank).all():               # usual case: every row is fully defined
            self.total += np.cumsum(np.bincount(np.minimum(first_hit, self.max_rank),
                                                minlength=self.max_rank + 1))[:self.max_rank]
            self.buffer = (ranks >= first_hit[-1]).astype(np.int64)
        else:
            for hit, kept in zip(first_hit, num_kept):
                n = min(int(kept), self.max_rank)
                self.buffer[:n] = ranks[:n] >= hit
                self.total += self.buffer
        self.num_valid += first_hit.size

    def value(self) -> np.ndarray:
        if self.num_valid == 0:
            raise ValueError("Error: all query identities do not appear in gallery")
        return self.total.astype(np.float32) / np.float32(self.num_valid)


class Cuhk03Cmc:
    """CUHK03 classic (single-gallery-shot) CMC, fed one valid query at a time in query order."""

    NUM_REPEATS = 10

    def __init__(self, max_rank: int):
        self.max_rank = max_rank
        self.total = np.zeros(max_rank, dtype=np.float32)
        self.num_valid = 0

    def add_query(self, kept_pids: np.ndarray, q_pid: int) -> None:
        """kept_pids: (n,) gallery ids of the query's kept ranking, best first (stable tie order).

        Draws from numpy's global RNG exactly as fast-reid: per repeat, one ``randint(0, n_id)`` per gallery
        id in order of first appearance in the ranking (identical stream to its ``np.random.choice(idxs)``).
        """
        uniq, first, inverse, counts = np.unique(kept_pids, return_index=True, return_inverse=True,
                                                 return_counts=True)
        appearance = np.argsort(first, kind="stable")          # id groups in order of first appearance
        group_of = np.empty_like(appearance)
        group_of[appearance] = np.arange(appearance.size)
        member_group = group_of[inverse]                       # group of each ranking position
        members = np.argsort(member_group, kind="stable")      # positions grouped, ascending within group
        group_start = np.concatenate(([0], np.cumsum(counts[appearance])[:-1]))
        num_groups = appearance.size
        q_group = group_of[np.searchsorted(uniq, q_pid)]
        ranks = np.arange(self.max_rank)
        row = np.zeros(self.max_rank, dtype=np.float32)
        for _ in range(self.NUM_REPEATS):
            draw = np.random.randint(0, counts[appearance])
            sampled = members[group_start + draw]              # ranking position of each group's sample
            hit = int((sampled < sampled[q_group]).sum())     # rank of the query id's sample
            row += ((ranks >= hit) & (ranks < num_groups)).astype(np.float32) / np.float32(self.NUM_REPEATS)
        self.total += row
        self.num_valid += 1

    def value(self) -> np.ndarray:
        if self.num_valid == 0:
            raise ValueError("Error: all query identities do not appear in gallery")
        return self.total / np.float32(self.num_valid)
