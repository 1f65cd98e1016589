"""Weight transfer by name + freezing, and every optimizer x scheduler pair."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fer_tune.errors import UserError
from fer_tune.models import create_model
from fer_tune.training.config import OPTIMIZERS, TrainConfig
from fer_tune.training.optim import build_optimizer, build_scheduler, current_lr, step_scheduler
from fer_tune.training.transfer import train_mode, transfer_weights


def test_transfer_loads_matching_names_and_freezes_them():
    base = create_model("vgg", width=0.25)
    for p in base.parameters():
        nn.init.normal_(p)
    model = create_model("vgg_spinal", width=0.25)
    report = transfer_weights(model, base.state_dict(), freeze=True)
    assert report.loaded and all(name.startswith("backbone.") for name in report.loaded)
    assert all(name.startswith("classifier.") for name in report.not_in_base)
    assert any(name.startswith("classifier.") for name in report.unused_from_base)
    for name, tensor in model.state_dict().items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, base.state_dict()[name])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and len(frozen) == report.frozen
    config = TrainConfig(model="vgg_spinal", optimizer="sgd_nesterov", lr=0.1)
    opt = build_optimizer(config, model.parameters(), 1)
    bn_stats = model.backbone[0][1].running_mean.clone()
    train_mode(model)
    assert not model.backbone[0][1].training and model.classifier.training  # frozen BN stays in eval
    loss = nn.functional.cross_entropy(model(torch.rand(8, 1, 40, 40)), torch.arange(8) % 7)
    loss.backward()
    opt.step()
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before)
    assert torch.equal(model.backbone[0][1].running_mean, bn_stats)
    assert "loaded" in report.summary()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("scheduler", ["plateau", "cosine", "step", "none"])
def test_every_optimizer_scheduler_pair_steps(optimizer, scheduler):
    if optimizer == "ranger21" and scheduler != "none":
        with pytest.raises(UserError, match="ranger21 runs its own warm-up"):
            TrainConfig(optimizer=optimizer, scheduler=scheduler)
        return
    config = TrainConfig(optimizer=optimizer, scheduler=scheduler, lr=0.01, epochs=3, step_size=1, step_gamma=0.5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = build_optimizer(config, model.parameters(), batches_per_epoch=2)
    sched = build_scheduler(config, opt)
    before = [p.detach().clone() for p in model.parameters()]
    for _epoch in range(3):
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(torch.rand(5, 4)), torch.tensor([0, 1, 2, 0, 1]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        step_scheduler(sched, 0.5)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if scheduler == "cosine":
        assert current_lr(opt) == pytest.approx(0.0, abs=1e-12)  # annealed to eta_min over the 3 epochs
    else:
        assert current_lr(opt) > 0
    if scheduler == "step":
        assert current_lr(opt) == pytest.approx(0.01 * 0.5**3)


def test_ranger21_runs_its_own_schedule_quietly(capsys):
    config = TrainConfig(
        optimizer="ranger21",
        scheduler="none",
        lr=0.01,
        epochs=4,
        ranger21_warmdown_start=0.5,
        ranger21_warmdown_min_lr=1e-4,
    )
    model = nn.Linear(4, 3)
    opt = build_optimizer(config, model.parameters(), batches_per_epoch=5)
    lrs = []
    for _ in range(20):
        nn.functional.cross_entropy(model(torch.rand(5, 4)), torch.tensor([0, 1, 2, 0, 1])).backward()
        opt.step()
        opt.zero_grad()
        lrs.append(current_lr(opt))
    assert lrs[-1] < 0.01  # warm-down reached
    assert capsys.readouterr().out == ""


def test_a_saved_state_leaves_the_frozen_base_out_and_resumes_exactly(tiny_data):
    """The transferred, frozen tensors are the base's: a run's saved state does not repeat them, and a
    run rebuilt from the same base continues from it with every weight as it was."""
    import io

    from fer_tune.training.engine import Trainer
    from fer_tune.training.transfer import frozen_tensors

    base = create_model("vgg", width=0.0625).state_dict()
    config = TrainConfig(model="vgg_spinal", width=0.0625, batch_size=64, epochs=2, freeze=True, optimizer="adam")
    run = Trainer(config, tiny_data.role("train"), tiny_data.role("val"), base_state=base)
    run.step_epoch()
    state = run.state_dict()
    frozen = frozen_tensors(run.model)
    assert len(frozen) > 30 and not frozen & set(state["model"])
    full = run.model.state_dict()

    def size(tensors) -> int:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        return buffer.tell()

    assert size(state["model"]) < size(full) / 2  # the VGG conv blocks are most of the weights
    again = Trainer(config, tiny_data.role("train"), tiny_data.role("val"), base_state=base)
    again.load_state_dict(state)
    assert all(torch.equal(again.model.state_dict()[name], tensor) for name, tensor in full.items())
    unfrozen = Trainer(config.replace(freeze=False), tiny_data.role("train"), tiny_data.role("val"), base_state=base)
    with pytest.raises(UserError, match="does not fit"):
        unfrozen.load_state_dict(state)  # a state of a frozen run lacks weights an unfrozen run trains


def test_checkpoint_schedule_writes_at_the_end_every_n_epochs_every_t_seconds_or_when_cheap_enough():
    from fer_tune.search.in_trial import CheckpointSchedule
    from fer_tune.search.space import Budget

    auto = CheckpointSchedule()
    assert auto.due(1, 10.0, final=False)  # nothing measured yet
    auto.written(1, cost=2.0)  # 2 s to write: the next unforced write waits for 40 s of training
    assert not auto.due(2, 10.0, final=False)
    assert not auto.due(3, 10.0, final=False)
    assert auto.due(4, 20.0, final=False)
    assert auto.due(5, 1.0, final=True)
    every = CheckpointSchedule(every=3)
    every.written(1, cost=1.0)
    assert [every.due(e, 100.0, final=False) for e in (2, 3, 4)] == [False, False, True]
    timed = CheckpointSchedule.of(Budget(checkpoint_every_s=60.0))
    timed.written(1, cost=50.0)  # a costly write: the 60 s rule, not the cost rule, decides
    assert [timed.due(e, 25.0, final=False) for e in (2, 3, 4)] == [False, False, True]
    assert sorted(Budget(max_epochs=200, grace_period=10, reduction_factor=3).asha_rungs()) == [10, 30, 90]
