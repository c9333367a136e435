"""Pseudo-label clustering: exact sparse k-reciprocal Jaccard distance, DBSCAN, and eps heuristics."""
from .dbscan import dbscan_labels
from .eps import rho_eps
from .jaccard import compute_jaccard_distance
from .knn import faiss_gpu_available, knn_l2

__all__ = ["compute_jaccard_distance", "dbscan_labels", "faiss_gpu_available", "knn_l2", "rho_eps"]
