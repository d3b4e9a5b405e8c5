"""Evaluation of learned features (layer 3, beside models; imports no model code)."""
from .knn import FEATURE_NAMES, FEATURES, extract_features, knn_scores, topk_correct
from .linear_probe import LinearProbe, fit_linear_probe

__all__ = ['FEATURES', 'FEATURE_NAMES', 'extract_features', 'knn_scores', 'topk_correct',
           'LinearProbe', 'fit_linear_probe']
