"""Classification metrics (scikit-learn's definitions): accuracy, macro P/R/F1, per class, confusion matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fer_tune import EMOTIONS


@dataclass(frozen=True)
class Scores:
    """Scores of one set of predictions; per-class lists follow the label order 0..6."""

    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float  # the mean of the per-class F1 scores (scikit-learn's average="macro")
    f1_of_macro_pr: float  # 2PR / (P + R) of the macro precision and recall: the paper's "macro F1"
    per_class_precision: list[float]
    per_class_recall: list[float]
    per_class_f1: list[float]
    confusion: list[list[int]]  # rows = true label, columns = predicted
    count: int

    def as_dict(self) -> dict:
        """Plain Python types (YAML / JSON friendly)."""
        return asdict(self)


def score(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(EMOTIONS)) -> Scores:
    """Accuracy, macro and per-class precision / recall / F1 and the confusion matrix.

    A class never predicted (or absent) counts as 0 precision / recall, as ``zero_division=0``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(num_classes))
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per_class = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return Scores(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_precision=float(macro[0]),
        macro_recall=float(macro[1]),
        macro_f1=float(macro[2]),
        f1_of_macro_pr=f1_of_means(float(macro[0]), float(macro[1])),
        per_class_precision=[float(v) for v in per_class[0]],
        per_class_recall=[float(v) for v in per_class[1]],
        per_class_f1=[float(v) for v in per_class[2]],
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        count=int(len(y_true)),
    )


def f1_of_means(precision: float, recall: float) -> float:
    """The harmonic mean of a (macro) precision and recall; 0 when both are 0."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(EMOTIONS)) -> float:
    """Macro F1 alone (for per-epoch logging)."""
    from sklearn.metrics import precision_recall_fscore_support

    return float(
        precision_recall_fscore_support(
            y_true, y_pred, labels=list(range(num_classes)), average="macro", zero_division=0
        )[2]
    )
