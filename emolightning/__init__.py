"""emolightning: multi-label emotion classification of text with PyTorch Lightning."""

from importlib import import_module

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

# where each public name lives: imported on first use (PEP 562), so `emolightning --version` and the
# plain commands do not pay for lightning and transformers before they need them
_HOMES = {
    "EmotionClassifier": "models.classifier",
    "EmotionDataModule": "data.datamodule",
    "EmotionDistiller": "models.distill",
    "EnsembleClassifier": "inference.ensemble",
    "EmotionScores": "metrics",
    "f1_scores": "metrics",
    "jaccard_samples": "metrics",
    "official_scores": "metrics",
    "tune_thresholds": "metrics",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
