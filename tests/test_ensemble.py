"""Issue 22, part 2: the ensemble is chosen on validation (PublicTest) only, by greedy selection with
replacement, and scored once on the test split from the logits the scoring already holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from fer_tune import pipeline
from fer_tune.reporting import ensemble as ensemble_module
from fer_tune.reporting.ensemble import ensemble_lines, greedy_selection
from fer_tune.reporting.scoring import ScoredRuns
from fer_tune.search.retrain_plan import RetrainOptions


def _logits(labels: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Logit 2 on the true class where ``correct``, else 1 on the next class (a confident mistake)."""
    out = np.zeros((len(labels), 7))
    rows = np.arange(len(labels))
    out[rows[correct], labels[correct]] = 2.0
    out[rows[~correct], (labels[~correct] + 1) % 7] = 1.0
    return out


def test_greedy_selection_starts_from_the_best_member_and_adds_only_what_helps():
    labels = np.arange(100) % 7
    idx = np.arange(100)
    a, b, c = _logits(labels, idx < 70), _logits(labels, idx >= 30), _logits(labels, idx < 50)
    counts = greedy_selection([c, a, b], labels)
    assert counts == [0, 1, 1]  # A (70%) first, then B: together right everywhere; C adds nothing


class _Data:
    """Just enough of FerData for the selection: a validation split's labels."""

    roles = {"val": "PublicTest"}

    def __init__(self, labels):
        self.labels = labels

    def split(self, name):
        assert name == "PublicTest", name  # the selection never asks for the test split
        return None, self.labels


def test_the_report_names_the_validation_best_ensemble_not_the_test_best(tmp_path, monkeypatch):
    folder = tmp_path / "search"
    (folder / "winners").mkdir(parents=True)
    runs = pd.DataFrame({"winner": [1, 1, 2], "seed": [0, 1, 0], "stage": "main", "protocol": "paper"})
    runs["checkpoint"] = [str(folder / "winners" / f"w{w}s{s}.pt") for w, s in zip(runs.winner, runs.seed)]
    for path in runs.checkpoint:
        open(path, "wb").close()
    val_labels, test_labels, idx = np.arange(100) % 7, (np.arange(100) + 3) % 7, np.arange(100)
    # on validation A + B are right everywhere; on the test split C alone is best (90%) and A + B reach 50%
    val = [_logits(val_labels, idx < 70), _logits(val_labels, idx >= 30), _logits(val_labels, idx < 50)]
    test = [_logits(test_labels, idx < 50), _logits(test_labels, idx < 50), _logits(test_labels, idx < 90)]
    monkeypatch.setattr(ensemble_module, "validation_logits", lambda runs, data, device=None: val)
    keys = [(1, 0, "main"), (1, 1, "main"), (2, 0, "main")]
    scored = ScoredRuns(
        runs, pd.DataFrame(), pd.DataFrame(), "PrivateTest", 0, {}, dict(zip(keys, test)), test_labels, idx < 0
    )
    table = pipeline.ensemble_scores(folder, runs, _Data(val_labels), scored, RetrainOptions())
    chosen = table.iloc[0]
    assert (chosen.networks, chosen.val_acc, chosen.accuracy) == (2, 1.0, 0.5)
    members = yaml.safe_load((folder / "ensemble.yaml").read_text())["members"]
    assert [(m["winner"], m["seed"], m["weight"]) for m in members] == [(1, 0, 0.5), (1, 1, 0.5)]
    assert members[0]["checkpoint"] == "winners/w1s0.pt"  # relative: the folder may move
    text = "\n".join(ensemble_lines(table, "PrivateTest"))
    assert "ensemble of 2 networks (greedy selection)" in text and "| 50.00%" in text


def test_no_ensemble_under_trainval_and_the_report_says_why(tmp_path):
    runs = pd.DataFrame({"winner": [1, 2], "seed": [0, 0], "stage": "main", "protocol": "trainval"})
    why = pipeline.ensemble_scores(tmp_path, runs, None, None, RetrainOptions(protocol="trainval"))
    assert "PublicTest is training data" in why and not (tmp_path / "ensemble.yaml").exists()
    assert "PublicTest is training data" in "\n".join(ensemble_lines(why, "PrivateTest"))
