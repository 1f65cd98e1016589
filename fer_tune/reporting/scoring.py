"""The final scoring: each retrained run is scored once on the test split (PrivateTest).

This module is the only caller of ``FerData.role("test")`` outside ``launch.py evaluate``.
It also scores a leakage-free PrivateTest that leaves out the test images whose exact pixels
also appear in what the models trained on (Training; under ``trainval`` PublicTest too), and gives
bootstrap confidence intervals of the accuracy. Nothing here chooses among the runs: the headline
is chosen on validation scores (:func:`fer_tune.reporting.report.headline_winner`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from fer_tune.data.fer_data import FerData
from fer_tune.data.leakage import rows_seen_in_training
from fer_tune.files import write_csv_atomic
from fer_tune.metrics import Scores, score
from fer_tune.search_folder import SearchFolder
from fer_tune.training.device import pick_device
from fer_tune.training.evaluate import evaluate_model, model_from_checkpoint


def bootstrap_ci(correct: np.ndarray, samples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (per-image accuracy, 0..1): scipy's, seeded."""
    result = scipy.stats.bootstrap(
        (np.asarray(correct, dtype=float),),
        np.mean,
        n_resamples=samples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        batch=256,
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass
class ScoredRuns:
    """Per-run scores, per-winner summaries and every prediction (for re-computation)."""

    runs: pd.DataFrame
    winners: pd.DataFrame
    predictions: pd.DataFrame
    test_split: str
    left_out: int
    confusion_by_winner: dict[int, list[list[int]]]
    logits: dict[tuple[int, int, str], np.ndarray] = field(default_factory=dict)  # each run's ten-crop test logits
    labels: np.ndarray | None = None  # the test split's labels (read once, with its images)
    leaked: np.ndarray | None = None  # test images whose pixels the models trained on


def _flat(prefix: str, s: Scores) -> dict[str, float]:
    return {
        f"{prefix}accuracy": s.accuracy,
        f"{prefix}macro_precision": s.macro_precision,
        f"{prefix}macro_recall": s.macro_recall,
        f"{prefix}macro_f1": s.macro_f1,
        f"{prefix}f1_of_macro_pr": s.f1_of_macro_pr,
    }


def score_runs(runs: pd.DataFrame, data: FerData, device: str | None = None) -> ScoredRuns:
    """Score every retrained checkpoint in ``runs`` once on the test split."""
    dev = pick_device(device)
    test_split = data.roles.get("test")
    images, labels = data.role("test")  # the one read of the test split
    protocols = set(runs.protocol)
    if len(protocols) != 1:
        raise ValueError(f"one protocol per scoring, got {sorted(protocols)}")
    leaked = rows_seen_in_training(data, protocols.pop())
    keep = ~leaked
    rows, predictions, logits = [], [], {}
    confusion: dict[int, np.ndarray] = {}
    for run in runs.itertuples():
        model, config = model_from_checkpoint(run.checkpoint, dev)
        result = evaluate_model(model, config, data, test_split, dev)
        clean = score(labels[keep], result.predictions[keep])
        stage = getattr(run, "stage", "main")
        logits[(run.winner, run.seed, stage)] = result.logits
        rows.append(
            {
                "winner": run.winner,
                "seed": run.seed,
                "stage": stage,
                "protocol": run.protocol,
                **_flat("", result.ten_crop),
                "single_crop_accuracy": result.single_crop.accuracy,
                **_flat("leak_free_", clean),
                **{f"f1_{i}": v for i, v in enumerate(result.ten_crop.per_class_f1)},
                **{f"precision_{i}": v for i, v in enumerate(result.ten_crop.per_class_precision)},
                **{f"recall_{i}": v for i, v in enumerate(result.ten_crop.per_class_recall)},
            }
        )
        if stage == "main":
            confusion[run.winner] = confusion.get(run.winner, 0) + np.asarray(result.ten_crop.confusion)
        predictions.append(
            pd.DataFrame(
                {
                    "winner": run.winner,
                    "seed": run.seed,
                    "stage": stage,
                    "row": np.arange(len(labels)),
                    "label": labels,
                    "prediction": result.predictions,
                    "in_training": leaked,
                }
            )
        )
    per_run = pd.DataFrame(rows)
    preds = pd.concat(predictions, ignore_index=True)
    return ScoredRuns(
        per_run,
        summarise(per_run, preds),
        preds,
        test_split,
        int(leaked.sum()),
        {k: v.tolist() for k, v in confusion.items()},
        logits,
        labels,
        leaked,
    )


def score_combination(scored: ScoredRuns, weights: dict[tuple[int, int, str], float]) -> dict[str, float]:
    """The test scores of the weighted mean of runs' logits (an ensemble chosen on validation), from the
    logits :func:`score_runs` kept: the test split is not read again."""
    mean = sum(scored.logits[key] * w for key, w in weights.items()) / sum(weights.values())
    prediction = mean.argmax(1)
    keep = ~scored.leaked
    low, high = bootstrap_ci(prediction == scored.labels)
    return {
        **_flat("", score(scored.labels, prediction)),
        **_flat("leak_free_", score(scored.labels[keep], prediction[keep])),
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
    }


def summarise(per_run: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Per winner and stage (``main``, or ``finetune``): mean and std over seeds, and a bootstrap 95% interval
    of the accuracy (images
    resampled, each image's correctness averaged over the seeds)."""
    rows = []
    metrics = [
        "accuracy",
        "single_crop_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "f1_of_macro_pr",
        "leak_free_accuracy",
        "leak_free_macro_f1",
    ]
    if "stage" not in per_run:
        per_run, predictions = per_run.assign(stage="main"), predictions.assign(stage="main")
    for (winner, stage), group in per_run.groupby(["winner", "stage"]):
        preds = predictions[(predictions.winner == winner) & (predictions.stage == stage)]
        correct = (preds.label == preds.prediction).groupby(preds.row).mean().to_numpy()
        low, high = bootstrap_ci(correct)
        row = {"winner": winner, "stage": stage, "seeds": len(group), "protocol": group.protocol.iloc[0]}
        for m in metrics:
            row[f"{m}_mean"] = float(group[m].mean())
            row[f"{m}_std"] = float(group[m].std(ddof=1)) if len(group) > 1 else 0.0
        row["accuracy_ci_low"], row["accuracy_ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def write_scores(scored: ScoredRuns, folder: Path) -> None:
    """scores.csv (per run), predictions.csv (every image of every run)."""
    write_csv_atomic(scored.runs, folder / SearchFolder.SCORES)
    write_csv_atomic(scored.predictions, folder / SearchFolder.PREDICTIONS)
