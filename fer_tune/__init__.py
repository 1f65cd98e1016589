"""fer-tune: hyperparameter search for facial-expression recognition on FER2013."""

__version__ = "0.1.0"

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013 class names, indexed by label (0..6)."""
