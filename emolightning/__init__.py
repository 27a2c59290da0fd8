"""emolightning: multi-label emotion classification of text with PyTorch Lightning."""

from .data import EmotionDataModule
from .distill import EmotionDistiller
from .ensemble import EnsembleClassifier
from .metrics import EmotionScores, f1_scores, jaccard_samples, official_scores, tune_thresholds
from .model import EmotionClassifier

__version__ = "0.1.0"
__all__ = [
    "EmotionClassifier",
    "EmotionDataModule",
    "EmotionDistiller",
    "EnsembleClassifier",
    "EmotionScores",
    "f1_scores",
    "jaccard_samples",
    "official_scores",
    "tune_thresholds",
]
