"""Metrics on hand-computed cases; checkpoints written atomically and read safely."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fer_tune.errors import UserError
from fer_tune.metrics import score
from fer_tune.training.checkpoint import load_checkpoint, save_checkpoint


def test_scores_on_a_hand_made_case():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    s = score(y_true, y_pred, num_classes=3)
    assert s.accuracy == pytest.approx(4 / 6)
    # class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: P 1 R 1/2
    assert s.per_class_precision == pytest.approx([0.5, 2 / 3, 1.0])
    assert s.per_class_recall == pytest.approx([0.5, 1.0, 0.5])
    f1 = [0.5, 0.8, 2 / 3]
    assert s.per_class_f1 == pytest.approx(f1)
    assert s.macro_precision == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert s.macro_recall == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert s.macro_f1 == pytest.approx(sum(f1) / 3)
    assert s.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_absent_class_counts_as_zero():
    s = score(np.array([0, 0]), np.array([0, 0]), num_classes=7)
    assert s.accuracy == 1.0 and s.macro_recall == pytest.approx(1 / 7)
    assert np.array(s.confusion).sum() == 2


def test_checkpoint_round_trip_and_no_temp_files(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"model": {"w": torch.ones(3)}, "config": {"lr": 0.1}, "epoch": 2})
    payload = load_checkpoint(path)
    assert torch.equal(payload["model"]["w"], torch.ones(3)) and payload["epoch"] == 2
    assert os.listdir(tmp_path) == ["m.pt"]


def test_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", {"model": {"w": torch.ones(3)}})

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["m.pt"]


def test_corrupt_truncated_foreign_and_pickled_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"model": {"w": torch.ones(1000)}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(UserError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not torch")
    with pytest.raises(UserError, match="garbage.pt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a fer-tune checkpoint"):
        load_checkpoint(foreign)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fer-tune/1", "model": {}, "obj": _Unsafe()}, evil)
    with pytest.raises(UserError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(evil)  # weights_only=True refuses arbitrary pickled objects
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Unsafe:
    pass


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_samples():
    from fer_tune.reporting.scoring import bootstrap_ci

    rng = np.random.default_rng(0)
    small = (rng.random(100) < 0.7).astype(float)
    large = (rng.random(10_000) < 0.7).astype(float)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert bootstrap_ci(small) == (lo_s, hi_s)  # seeded
    # the same percentile interval as resampling by hand gives, within the resampling noise
    means = large[np.random.default_rng(1).integers(0, len(large), (2000, len(large)))].mean(1)
    assert np.percentile(means, [2.5, 97.5]) == pytest.approx([lo_l, hi_l], abs=0.003)
