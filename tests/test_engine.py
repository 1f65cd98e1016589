"""The training engine: it learns, it repeats exactly, it stops on divergence, it resumes exactly."""

from __future__ import annotations

import math

import pytest

from fer_tune.data.fer2013 import load_fer
from fer_tune.training.config import TrainConfig
from fer_tune.training.engine import Trainer

SMALL = dict(model="vgg", width=0.125, batch_size=32)
NARROW = dict(SMALL, width=0.0625)  # for checks that do not depend on how much the model learns


@pytest.mark.slow
def test_short_training_on_demo_data_beats_chance_widely(learn_csv):
    """Four epochs on the demo faces: twice chance (the real-data test shows learning on FER2013).

    Four, not two: after two epochs the loss has barely left ln 7 and the accuracy (0.17-0.31 over
    seeds and CPUs) sits at the bar; at four, seeds 0-2 measured 0.63 / 0.74 / 0.61 (AVX-512)."""
    data = load_fer(learn_csv)
    trainer = Trainer(TrainConfig(**SMALL, epochs=4, lr=0.01), data.role("train"), data.role("val"))
    history = trainer.fit()
    assert len(history) == 4
    assert history[-1].train_loss < history[0].train_loss
    assert trainer.best_val_acc > 2 / 7  # chance is 1/7 = 0.14
    assert all(0 <= r.val_f1 <= 1 and r.lr > 0 for r in history)


def test_same_seed_same_metrics_on_cpu(chain_data):
    def run():
        t = Trainer(TrainConfig(**NARROW, epochs=2, seed=3), chain_data.role("train"), chain_data.role("val"))
        return [r.as_dict() | {"epoch_time": 0, "step_time": 0} for r in t.fit()]

    assert run() == run()


def test_divergence_is_detected_at_the_first_non_finite_loss(tiny_data):
    config = TrainConfig(**NARROW, epochs=5, lr=1e6, optimizer="sgd_nesterov", scheduler="none")
    trainer = Trainer(config, tiny_data.role("train"), tiny_data.role("val"))
    history = trainer.fit()
    assert history[-1].diverged and len(history) < 5
    assert math.isnan(history[-1].train_loss)


@pytest.mark.slow
def test_resume_from_state_continues_exactly(chain_data):
    config = TrainConfig(**NARROW, epochs=3, seed=1, optimizer="adam", lr=1e-3, scheduler="cosine")
    straight = Trainer(config, chain_data.role("train"), chain_data.role("val"))
    expected = [r.val_acc for r in straight.fit()] + [straight.history[-1].train_loss]

    first = Trainer(config, chain_data.role("train"), chain_data.role("val"))
    first.step_epoch()
    first.step_epoch()
    state = first.state_dict()
    second = Trainer(config, chain_data.role("train"), chain_data.role("val"))
    second.load_state_dict(state)
    assert second.epoch == 2
    history = second.fit()
    assert [r.epoch for r in history] == [1, 2, 3]
    assert [r.val_acc for r in history] + [history[-1].train_loss] == pytest.approx(expected, abs=1e-6)


def test_test_split_is_never_given_to_the_trainer(tiny_data, monkeypatch, tmp_path):
    """A Trainer receives arrays; the CLI and the search hand it only the train and val roles."""
    seen = []
    original = type(tiny_data).role

    def spy(self, role):
        seen.append(role)
        return original(self, role)

    monkeypatch.setattr(type(tiny_data), "role", spy)
    from fer_tune.training.single_run import run_training

    run_training(TrainConfig(**SMALL, epochs=1), tiny_data, tmp_path / "run")
    assert "test" not in seen and set(seen) == {"train", "val"}


@pytest.mark.parametrize("n, expected", [(20, [8, 8, 4]), (17, [8, 9]), (5, [5]), (16, [8, 8])])
def test_an_epoch_is_every_image_in_batches_of_batch_size(n, expected):
    """ceil(n / batch) batches, the last partial (a single leftover joins the one before); a measurement
    of one batch trains one batch, never the whole split; Ranger21's schedule is told the count."""
    import numpy as np

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), rng.integers(0, 7, n)
    config = TrainConfig(**NARROW, epochs=1, optimizer="ranger21", scheduler="none").replace(batch_size=8)
    trainer = Trainer(config, (images, labels), (images[:4], labels[:4]))
    seen: list[int] = []
    trainer.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0] // 10))  # ten crops
    trainer.train_one_epoch()
    assert seen == expected and trainer.batches_per_epoch == len(expected)
    assert trainer.optimizer.num_batches_per_epoch == len(expected)
    seen.clear()
    trainer.train_one_epoch(max_batches=1)
    assert seen == [min(8, n)]


def test_cuda_backend_switches_follow_the_config():
    """cuDNN autotuning on CUDA, TF32 only where the run is fp32, both off when deterministic; the CPU
    touches none of them."""
    import torch

    from fer_tune.training.device import backend_settings

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert backend_settings(TrainConfig(**NARROW), cuda) == {
        "cudnn_benchmark": True,
        "tf32": False,
        "cudnn_deterministic": False,
    }
    assert backend_settings(TrainConfig(**NARROW, amp=False), cuda)["tf32"] is True
    assert backend_settings(TrainConfig(**NARROW, amp=False, deterministic=True), cuda) == {
        "cudnn_benchmark": False,
        "tf32": False,
        "cudnn_deterministic": True,
    }
    assert not any(backend_settings(TrainConfig(**NARROW, amp=False), cpu).values())
    assert TrainConfig(**NARROW, deterministic=True).to_dict()["deterministic"] is True  # saved with the run
