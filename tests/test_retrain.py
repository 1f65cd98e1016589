"""Retraining protocols and winner picking (the Ray part runs in test_search's smoke chain)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fer_tune.config import TrainConfig, write_yaml
from fer_tune.engine import Trainer
from fer_tune.errors import UserError
from fer_tune.retrain import RetrainData, _phases, pick_winners


def test_trainval_protocol_refits_on_train_plus_val_for_the_selected_epochs(tiny_data):
    config = TrainConfig(model="vgg", width=0.125, batch_size=32, epochs=3, optimizer="adam", lr=1e-3,
                         scheduler="none")
    train, val = tiny_data.role("train"), tiny_data.role("val")
    data = RetrainData((), train[0], train[1], val[0], val[1], None, None, "trainval")
    phases = _phases(Trainer(config, train, val), config, train, val, data)
    name, select, stop = next(phases)
    assert name == "select" and stop == 3
    select.fit()
    best_epoch = max(select.history, key=lambda r: r.val_acc).epoch
    name, refit, stop = next(phases)
    assert name == "refit" and stop == best_epoch and refit.config.epochs == 3  # the whole budget's schedule
    assert len(refit.train_labels) == len(train[1]) + len(val[1])
    with pytest.raises(StopIteration):
        next(phases)
    paper = RetrainData((), train[0], train[1], val[0], val[1], None, None, "paper")
    assert [n for n, _, _ in _phases(select, config, train, val, paper)] == ["select"]


def test_pick_winners_orders_by_validation_score_and_skips_failures(tmp_path):
    folder = tmp_path / "vgg"
    folder.mkdir()
    pd.DataFrame({
        "trial": [1, 2, 3, 4], "trial_id": ["a", "b", "c", "d"],
        "optimizer": ["sgd_nesterov", "adam", "adam", "ranger"], "scheduler": ["plateau", "cosine", "step", "step"],
        "lr": [0.01, 0.001, 10.0, 0.002], "weight_decay": [1e-4] * 4, "batch_size": [64, 32, 64, 128],
        "best_val_acc": [0.5, 0.7, np.nan, 0.6],
        "status": ["completed", "stopped by ASHA", "diverged at epoch 1", "completed"],
    }).to_csv(folder / "trials.csv", index=False)
    write_yaml(folder / "best_config.yaml", TrainConfig(epochs=7).to_dict(),
               header="# best configuration of search 'vgg' (vgg)\n")
    winners = pick_winners(folder, top_k=2)
    assert [w.trial for w in winners] == ["b", "d"]
    assert winners[0].config["optimizer"] == "adam" and winners[0].config["epochs"] == 7
    assert winners[1].config["batch_size"] == 128
    with pytest.raises(UserError, match="no trials.csv"):
        pick_winners(tmp_path, top_k=1)
