"""Exact, memory-bounded retrieval evaluation (mAP / CMC / mINP) for ReID and text-to-image retrieval.

``evaluate_features`` computes distances blockwise from features (never the full Q x G matrix);
``evaluate_rank`` is a drop-in for fast-reid's ``evaluate_rank`` on a dense matrix. Tie order: ascending
distance, ties broken by gallery index (a stable sort), see ``ranking.py``.
"""
from .blockwise import RankResult, default_block_size, evaluate_distmat, evaluate_features, evaluate_rank
from .protocols import PROTOCOLS, Protocol, get_protocol
from .ranking import BlockRanks, rank_matches

__all__ = ["BlockRanks", "PROTOCOLS", "Protocol", "RankResult", "default_block_size", "evaluate_distmat",
           "evaluate_features", "evaluate_rank", "get_protocol", "rank_matches"]
