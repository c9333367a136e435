"""Using a trained model: features (``Predictor``), a gallery feature file, top-k search, ranking figures and
ONNX export. Shared code: it knows no method; method inputs arrive as batch keys and the model's eval forward."""
from .gallery_index import GalleryIndex, list_image_items, model_fingerprint, update_index
from .predictor import Predictor
from .search import Ranking, exact_topk, faiss_topk, recall_at_k, rerank_distances, topk_from_distances

__all__ = ["GalleryIndex", "Predictor", "Ranking", "exact_topk", "faiss_topk", "list_image_items",
           "model_fingerprint", "recall_at_k", "rerank_distances", "topk_from_distances", "update_index"]
