"""Evaluation of learned features (layer 3, beside models; imports no model code)."""
from .knn import FEATURES, extract_features, knn_scores, topk_correct

__all__ = ['FEATURES', 'extract_features', 'knn_scores', 'topk_correct']
