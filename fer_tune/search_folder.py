"""What a search folder is: every file a search, its retraining and its report write there, named once
(:class:`SearchFolder`), how a trial may end, and the readers of a run's per-epoch history. A bottom-layer
module: the search writes these files, reporting and the retraining read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fer_tune.errors import UserError

ASHA_STATUS = "stopped by ASHA"  # ASHA ended it at a rung: its score is a truncated one
PATIENCE_STATUS = "stopped: no better score within patience"  # the budget's early stopping
TIME_BUDGET_STATUS = "stopped by the time budget"  # budget.time_budget_s ran out while it trained
SCORED_STATUSES = (
    "completed",
    ASHA_STATUS,
    PATIENCE_STATUS,
    TIME_BUDGET_STATUS,
)  # trials.csv rows a retraining may pick


# importances from fewer finished trials than this are not shown (analysis.md) nor to be read (the study's
# note): calibrated by bench/bench_importance.py (bench/README.md, 40 synthetic studies per size): the smallest
# size at which fANOVA named the parameter that mattered in at least 90% of them (92% at 16, 75% at 12, 28% at
# 4; PED-ANOVA 72-80% from 16 up)
MIN_TRIALS_FOR_IMPORTANCE = 16
MIN_TRIALS_WHY = "75% of 40 studies (28% with 4 trials)"


def trial_label(number: int | None, trial_id: str = "") -> str:
    """``t04``: a search trial by its number in trials.csv (its Tune id where it has none), as run names,
    plots and the retraining's sources show it."""
    return f"t{int(number):02d}" if number is not None else trial_id


def retrain_label(winner: int, seed: int) -> str:
    """``w1-s0``: a retraining run by its winner's rank and its seed (run names add the source trial)."""
    return f"w{int(winner)}-s{int(seed)}"


@dataclass(frozen=True)
class SearchFolder:
    """The files of one search folder, by job."""

    path: Path

    MANIFEST = "manifest.yaml"
    LOCK = ".lock"
    TRIALS = "trials.csv"
    BEST_CONFIG = "best_config.yaml"
    BEST_MODEL = "best_model.pt"
    OPTUNA_DB = "optuna.db"  # the search's Optuna study (study name = the search's name)
    SEARCH_EXPERIMENT = "ray"  # Ray Tune's experiment of the search trials
    TENSORBOARD = "tensorboard"  # fer-tune's TensorBoard events: every trial and retraining run, one HParams table
    HISTORY = "history"  # each trial's and retraining run's per-epoch history (CSV), copied from Ray's storage
    BASE = "base"  # the base model a transfer search trained first
    RETRAIN_EXPERIMENT = "retrain"
    WINNERS_DIR = "winners"
    RETRAIN_SETTINGS = "retrain.yaml"
    RETRAIN_RUNS = "retrain_runs.csv"
    SCORES = "scores.csv"
    PREDICTIONS = "predictions.csv"
    WINNERS = "winners.csv"
    ENSEMBLE = "ensemble.yaml"  # the ensemble chosen on PublicTest (evaluate / predict / export take it)
    ENSEMBLES = "ensembles.csv"  # the ensemble's and the plain average's PrivateTest scores
    REPORT = "report.md"
    ANALYSIS = "analysis.md"
    IMPORTANCE_CSV = "importance.csv"
    LEADERBOARD = "leaderboard.md"  # beside the search folders, in the results folder
    CONFUSION_PNG = "confusion_matrix.png"
    CURVES_PNG = "learning_curves.png"
    SEARCH_PNG = "search.png"
    IMPORTANCE_PNG = "importance.png"
    SLICE_PNG = "slice.png"
    PARALLEL_PNG = "parallel_coordinate.png"

    @classmethod
    def outputs(cls) -> tuple[str, ...]:
        """Every name fer-tune writes into a search folder (what it may replace or delete there)."""
        return tuple(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str) and k != "LEADERBOARD")

    def remove_stale(self, *names: str) -> None:
        """Delete outputs of an earlier run that this one replaces (only names fer-tune writes here)."""
        for name in names:
            if name not in self.outputs():
                raise ValueError(f"{name} is not a file fer-tune writes into a search folder")
            path = self.path / name
            if path.is_file():
                path.unlink()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def trials(self, metric: str, *columns: str) -> pd.DataFrame:
        """``trials.csv`` as the search wrote it: a :class:`UserError` naming the file when it is missing,
        empty, not a table, or lacks the status, the score or one of ``columns``."""
        path = self.path / self.TRIALS
        fix = "run the same --search again to rewrite it (or --search ... --fresh to start over)"
        if not path.is_file():
            raise UserError(f"{self.path}: no {self.TRIALS}, so no finished search; {fix}")
        try:
            table = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            reason = "it is empty" if isinstance(exc, pd.errors.EmptyDataError) else "it is not a CSV table"
            raise UserError(f"{path}: not the trials table fer-tune writes ({reason}); {fix}") from None
        missing = [c for c in (*columns, "status", f"best_{metric}") if c not in table]
        if missing:
            raise UserError(f"{path}: not the trials table fer-tune writes (no column {', '.join(missing)}); {fix}")
        return table.astype({"trial_id": str}) if "trial_id" in table else table

    def study_storage(self) -> str:
        """The Optuna storage URL of the search (``optuna-dashboard`` opens it too)."""
        return f"sqlite:///{(self.path / self.OPTUNA_DB).resolve()}"


def epoch_rows(history: pd.DataFrame | None) -> pd.DataFrame | None:
    """A run's per-epoch reports, each epoch once (per phase). A driver killed after an epoch's report
    but before Ray recorded that epoch's checkpoint makes the resumed run repeat the epoch, and Tune's
    logs (``progress.csv``, ``result.json``) may then hold it twice: the later row, the one the run
    went on from, is kept."""
    if history is None or "epoch" not in history:
        return history
    keys = [key for key in ("phase", "epoch") if key in history]
    return history.drop_duplicates(keys, keep="last").reset_index(drop=True)


def run_history(result) -> pd.DataFrame | None:
    """The per-epoch history of a Tune ``Result`` (read from its logs), each epoch once."""
    return epoch_rows(result.metrics_dataframe)


def read_history(progress_csv: Path) -> pd.DataFrame:
    """A run's ``progress.csv``, each epoch once."""
    return epoch_rows(pd.read_csv(progress_csv))
