"""High-level APIs: single-image inference with a config and a checkpoint."""
from .inference import (
    CheckpointMismatchError,
    inference_classifier,
    inference_detector,
    inference_segmentor,
    init_model,
    model_task,
)

__all__ = ['init_model', 'inference_classifier', 'inference_segmentor', 'inference_detector',
           'model_task', 'CheckpointMismatchError']
