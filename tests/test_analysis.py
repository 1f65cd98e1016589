"""``--analyze``: importances come from real differences between trials, never from ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from md_tables import table_rows

from fer_tune.manifest import SearchManifest
from fer_tune.reporting.analysis import analyze
from fer_tune.reporting.leaderboard import _top_knob
from fer_tune.search_folder import SearchFolder


def _built_search(folder: Path, scores: list[float]) -> None:
    """A search folder with an Optuna study of ``len(scores)`` finished trials over lr and optimizer."""
    folder.mkdir()
    SearchManifest(
        name="built",
        space="search_spaces/vgg.yaml",
        model="vgg",
        base=None,
        metric="val_acc",
        mode="max",
        smoke=False,
        seed=0,
        budget={"max_epochs": 3},
    ).write(folder)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="built", storage=SearchFolder(folder).study_storage(), direction="maximize")
    rng = np.random.default_rng(0)
    lrs = 10 ** rng.uniform(-4, -1, len(scores))
    optimizers = [("adam", "sgd_nesterov")[i % 2] for i in range(len(scores))]
    distributions = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd_nesterov"]),
    }
    for lr, optimizer, score in zip(lrs, optimizers, scores):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "optimizer": optimizer}, distributions=distributions, value=score
            )
        )
    pd.DataFrame(
        {
            "trial": range(1, len(scores) + 1),
            "optimizer": optimizers,
            "lr": lrs,
            "best_val_acc": scores,
            "status": "completed",
            "epochs_run": 3,
            "wall_time_s": 1.0,
            "gpu_hours": 0.0,
            "cpu_hours": 0.001,
            "epochs_saved_by_patience": 0,
        }
    ).to_csv(folder / "trials.csv", index=False)


@pytest.mark.slow
def test_importances_name_the_knob_that_moves_the_score(tmp_path):
    """The score follows lr alone: fANOVA and PED-ANOVA rank lr first, importance.csv holds it, and
    the leaderboard's column reads it."""
    rng = np.random.default_rng(0)
    lrs = 10 ** rng.uniform(-4, -1, 16)
    folder = tmp_path / "built"
    _built_search(folder, list(0.2 + 0.2 * (np.log10(lrs) + 4)))
    text = analyze(folder).read_text()
    table = pd.read_csv(folder / "importance.csv").set_index("parameter")
    assert table.fANOVA.idxmax() == "lr" and table["PED-ANOVA"].idxmax() == "lr"
    assert ["parameter", "fANOVA", "PED-ANOVA"] in table_rows(text) and _top_knob(folder).startswith("lr (")


def test_no_importances_when_every_trial_scored_the_same(tmp_path):
    """Tied scores have nothing to explain: one note, no table, no importance.csv (PED-ANOVA would
    have given every parameter the same share)."""
    folder = tmp_path / "built"
    _built_search(folder, [1 / 7] * 16)
    text = analyze(folder).read_text()
    assert "- not computed: importances explain differences between trial scores, and every trial scored 0.1429" in text
    assert (
        ["parameter"] not in [r[:1] for r in table_rows(text)]
        and not (folder / "importance.csv").exists()
        and _top_knob(folder) == ""
    )


def test_factor_tables_take_the_best_by_the_search_mode():
    """A search that minimises val_loss: a factor's best score is its lowest loss, listed first."""
    from fer_tune.reporting.analysis import factor_table

    trials = pd.DataFrame(
        {
            "optimizer": ["adam", "adam", "sgd_nesterov"],
            "best_val_loss": [0.9, 1.4, 1.1],
            "epochs_run": 3,
            "gpu_hours": 0.0,
            "cpu_hours": 0.1,
        }
    )
    table = factor_table(trials, "optimizer", "best_val_loss", "min")
    assert table.index.tolist() == ["adam", "sgd_nesterov"] and table.loc["adam", "best"] == 0.9
    assert factor_table(trials, "optimizer", "best_val_loss", "max").loc["adam", "best"] == 1.4


def test_no_importances_from_fewer_finished_trials_than_the_calibrated_minimum(tmp_path):
    """Issue 23: 15 finished trials are below MIN_TRIALS_FOR_IMPORTANCE (16, bench/bench_importance.py): the
    analysis says so and why, and draws no importance; the plots of every trial say how many they show."""
    from fer_tune.search_folder import MIN_TRIALS_FOR_IMPORTANCE

    rng = np.random.default_rng(0)
    lrs = 10 ** rng.uniform(-4, -1, MIN_TRIALS_FOR_IMPORTANCE - 1)
    folder = tmp_path / "built"
    _built_search(folder, list(0.2 + 0.2 * (np.log10(lrs) + 4)))
    text = analyze(folder).read_text()
    assert "- not computed: 15 of 15 trials finished" in text and "at least 16 finished trials" in text
    assert not (folder / "importance.png").exists() and not (folder / "importance.csv").exists()
    assert "plots of the 15 finished trials" in text and (folder / "slice.png").is_file()
