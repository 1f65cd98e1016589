"""Winner picking (the Ray part runs in test_search's smoke chain)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fer_tune.errors import UserError
from fer_tune.search.retrain import pick_winners
from fer_tune.search.space_file import load_search_space
from fer_tune.training.config import TrainConfig
from fer_tune.yaml_files import write_yaml


def test_pick_winners_orders_by_validation_score_and_skips_failures(tmp_path):
    folder = tmp_path / "vgg"
    folder.mkdir()
    pd.DataFrame(
        {
            "trial": [1, 2, 3, 4],
            "trial_id": ["a", "b", "c", "d"],
            "optimizer": ["sgd_nesterov", "adam", "adam", "ranger"],
            "scheduler": ["plateau", "cosine", "step", "step"],
            "lr": [0.01, 0.001, 10.0, 0.002],
            "weight_decay": [1e-4] * 4,
            "batch_size": [64, 32, 64, 128],
            "best_val_acc": [0.5, 0.7, np.nan, 0.6],
            "status": ["completed", "stopped by ASHA", "diverged at epoch 1", "completed"],
        }
    ).to_csv(folder / "trials.csv", index=False)
    write_yaml(folder / "best_config.yaml", TrainConfig(epochs=7).to_dict())
    space = load_search_space("vgg")
    winners = pick_winners(folder, space, top_k=2)
    assert [w.trial for w in winners] == ["b", "d"]
    assert winners[0].config["optimizer"] == "adam" and winners[0].config["epochs"] == 7
    assert winners[1].config["batch_size"] == 128
    with pytest.raises(UserError, match="no trials.csv"):
        pick_winners(tmp_path, space, top_k=1)


def test_retraining_seeds_are_new_seeds():
    """Issue 22: run 0 of a retraining is not the search trial again (which would carry the search's
    winner's curse into the validation mean that picks the headline)."""
    from fer_tune.search.retrain_plan import retrain_seed

    for search_seed in (0, 1, 7, 2**32 - 1):
        seeds = [retrain_seed(search_seed, run) for run in range(100)]
        assert search_seed not in seeds and len(set(seeds)) == 100 and all(0 <= s < 2**32 for s in seeds)
