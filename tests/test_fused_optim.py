"""The fused Ranger and Ranger21 steps: the same parameters as the packages' steps (pytorch-ranger's
``Ranger``; ranger21's ``Ranger21`` with the per-parameter weight decay fix) on every model family,
a checkpoint of the package's step resumes in the fused one, few operations a step, no host sync."""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pytorch_ranger import Ranger
from ranger21 import Ranger21

from fer_tune.compat import ranger21_reference_step
from fer_tune.models import create_model
from fer_tune.training.fused_optim import FusedRanger, FusedRanger21

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_optim import count_step_ops  # noqa: E402

RANGER21_OPTIONS = dict(
    lr=3e-3, weight_decay=1e-2, num_epochs=5, num_batches_per_epoch=10, normloss_factor=1e-3, logging_active=False
)  # 50 steps: warm-up (11), lookahead (every 5), warm-down (from 36)


def _small_effnet():
    import timm

    return timm.create_model(
        "efficientnetv2_rw_s", channel_multiplier=0.25, depth_multiplier=0.25, in_chans=1, num_classes=7
    )


def _model(family: str, tiny_vit_folder: Path) -> torch.nn.Module:
    if family == "vgg_spinal":  # channels-last, as the Trainer runs it: a permuted flat layout
        return create_model("vgg_spinal", width=0.0625).to(memory_format=torch.channels_last)
    if family == "effnetv2s":
        return _small_effnet()
    return create_model(
        "vit_l32_spinal",
        pretrained=__import__("fer_tune.models.vit", fromlist=["x"]).resolve_pretrained(str(tiny_vit_folder)),
    )  # 3-d position embedding and class token


class ReferenceRanger21(Ranger21):
    """The package's class, stepping with its own (fixed) step."""

    def step(self, closure=None):
        with contextlib.redirect_stdout(io.StringIO()):
            return ranger21_reference_step()(self, closure)


def _quiet(cls, params, **options):
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(params, **options)


def _grads(model: torch.nn.Module, step: int) -> None:
    """Seeded gradients that depend on the weights (as a loss's would), the same for both copies."""
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g) * 0.1 + 0.5 * p.detach())  # p's layout


def _run(model, optimizer, steps: range) -> None:
    for step in steps:
        _grads(model, step)
        optimizer.step()


def _assert_same(fused: torch.nn.Module, reference: torch.nn.Module, tolerance: float = 1e-5) -> None:
    for (name, a), b in zip(fused.named_parameters(), reference.parameters()):
        scale = b.detach().abs().max().clamp(min=1e-12)
        assert float((a - b).abs().max() / scale) <= tolerance, name


@pytest.fixture(params=[False, True], ids=["per-tensor reductions (CPU)", "one launch per reduction (accelerator)"])
def reductions(request) -> dict:
    """Both ways the fused step reduces over segments, each tested here on the CPU."""
    return {"one_launch": request.param}


# the one-launch path on the layouts that differ: channels-last (vgg_spinal) and 3-d tensors (vit)
@pytest.mark.parametrize(
    "family, one_launch",
    [("vgg_spinal", False), ("effnetv2s", False), ("vit", False), ("vgg_spinal", True), ("vit", True)],
)
@pytest.mark.slow
def test_fused_ranger21_gives_the_reference_parameters_after_50_steps(family, one_launch, tiny_vit_folder):
    reductions = {"one_launch": one_launch}
    torch.manual_seed(0)
    reference = _model(family, tiny_vit_folder)
    fused = copy.deepcopy(reference)
    ref_opt = _quiet(ReferenceRanger21, reference.parameters(), **RANGER21_OPTIONS)
    fused_opt = _quiet(FusedRanger21, fused.parameters(), **RANGER21_OPTIONS, **reductions)
    _run(reference, ref_opt, range(50))
    _run(fused, fused_opt, range(50))
    assert ref_opt.warmup_complete and fused_opt.warmup_complete and fused_opt.current_lr < RANGER21_OPTIONS["lr"]
    _assert_same(fused, reference)
    assert any(
        float((a - b).abs().max()) > 0 for a, b in zip(fused.parameters(), _model(family, tiny_vit_folder).parameters())
    )  # it trained


@pytest.mark.parametrize("family", ["vgg_spinal", "effnetv2s", "vit"])
def test_fused_ranger_gives_the_reference_parameters_after_50_steps(family, tiny_vit_folder):
    torch.manual_seed(0)
    reference = _model(family, tiny_vit_folder)
    fused = copy.deepcopy(reference)
    with warnings.catch_warnings():  # the package's deprecated addcmul_ overload
        warnings.simplefilter("ignore", UserWarning)
        _run(reference, Ranger(reference.parameters(), lr=3e-3, weight_decay=1e-2), range(50))
    _run(fused, FusedRanger(fused.parameters(), lr=3e-3, weight_decay=1e-2), range(50))
    _assert_same(fused, reference)


def test_a_checkpoint_of_the_package_step_resumes_in_the_fused_one(reductions, tiny_vit_folder):
    """Same state layout: the reference's state (and counters) load into the fused class, which then
    continues as the reference would; the fused class's own state dict has the package's keys."""
    torch.manual_seed(0)
    reference = _model("vgg_spinal", tiny_vit_folder)
    ref_opt = _quiet(ReferenceRanger21, reference.parameters(), **RANGER21_OPTIONS)
    _run(reference, ref_opt, range(23))
    saved = copy.deepcopy(ref_opt.state_dict())
    saved["ranger21_counters"] = {
        k: getattr(ref_opt, k)
        for k in (
            "lookahead_step",
            "current_iter",
            "epoch_count",
            "warmup_complete",
            "warmup_curr_pct",
            "current_lr",
            "param_size",
        )
    }
    fused = copy.deepcopy(reference)
    fused_opt = _quiet(FusedRanger21, fused.parameters(), **RANGER21_OPTIONS, **reductions)
    fused_opt.load_state_dict(saved)
    _run(reference, ref_opt, range(23, 50))
    _run(fused, fused_opt, range(23, 50))
    _assert_same(fused, reference)
    mine, theirs = fused_opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert mine.keys() == theirs.keys() and all(list(mine[i]) == list(theirs[i]) for i in mine)
    assert all(mine[0][k].shape == theirs[0][k].shape for k in theirs[0] if k != "step")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vgg_spinal", "effnetv2s"])
@pytest.mark.parametrize("name", ["ranger", "ranger21"])
def test_a_fused_step_is_a_few_dozen_operations_whatever_the_model(family, name, tiny_vit_folder):
    """Counted as the issue counts them (top-level aten operations of one ``step``, metadata-only views
    left out: they launch nothing), on the accelerator path: at most 100, where the packages' steps take
    hundreds or more."""
    counts = {}
    for kind in ("package", "fused"):
        model = _model(family, tiny_vit_folder)
        if name == "ranger":
            optimizer = (Ranger if kind == "package" else FusedRanger)(model.parameters(), lr=1e-3)
        else:
            optimizer = (
                _quiet(ReferenceRanger21, model.parameters(), **RANGER21_OPTIONS)
                if kind == "package"
                else _quiet(FusedRanger21, model.parameters(), **RANGER21_OPTIONS, one_launch=True)
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            counts[kind] = count_step_ops(model, optimizer)
    assert counts["fused"] <= 100 < counts["package"], counts


class DeviceReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of a tensor's value by the host (``item``, ``bool``, ``float``, ``int``, ``tolist``)."""

    READS = {
        torch.Tensor.item,
        torch.Tensor.__bool__,
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.tolist,
        torch.Tensor.numpy,
    }

    def __init__(self, host_counters: set[int]):
        super().__init__()
        self.count, self.host_counters = 0, host_counters

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS and id(args[0]) not in self.host_counters
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam", "ranger", "ranger21"])
def test_training_steps_read_nothing_back_but_the_loss_check(name, chain_data):
    """On the accelerator path (loss checked every 16th batch), 32 training steps read the device
    twice (the two loss checks) and once more at the epoch's end (its mean loss and accuracy)."""
    from fer_tune.training.config import TrainConfig
    from fer_tune.training.engine import Trainer

    config = TrainConfig(
        model="vgg_spinal",
        width=0.0625,
        batch_size=2,
        epochs=1,
        optimizer=name,
        scheduler="none" if name == "ranger21" else "cosine",
        lr=1e-3,
    )
    trainer = Trainer(config, chain_data.role("train"), chain_data.role("val"))
    trainer.loss_check_every = 16  # what an accelerator runs
    if name == "ranger21":
        trainer.optimizer.one_launch = True  # and the fused step's accelerator path
    trainer.train_one_epoch(max_batches=2)  # the first step builds the optimizer's state
    # torch's Adam keeps its step counters on the CPU even on CUDA: reading them is no device sync
    counters = {id(s["step"]) for s in trainer.optimizer.state.values() if torch.is_tensor(s.get("step"))}
    reads = DeviceReads(counters)
    with reads:
        trainer.train_one_epoch(max_batches=32)
    assert reads.count == 2 + 2  # two loss checks; the epoch's mean loss and accuracy


def test_a_pnm_momentum_the_package_ignores_is_refused():
    from fer_tune.errors import UserError
    from fer_tune.training.config import TrainConfig

    with pytest.raises(UserError, match="ranger21_pnm_momentum = 2.0 is not allowed; use 1"):
        TrainConfig(model="vgg", optimizer="ranger21", scheduler="none", ranger21_pnm_momentum=2.0)
