"""Operations per optimizer step, and the CPU time of a training step, with the packages' Ranger /
Ranger21 steps against fer-tune's fused ones, side by side in one run.

    python bench/bench_optim.py            # ~2 minutes on 2 cores

1. Operations per ``optimizer.step()``, counted with ``torch.profiler`` on the CPU: top-level aten
   operations (each is at least one kernel launch on a GPU; torch's own optimizers with
   ``foreach=True`` as they run on CUDA), metadata-only views (no kernel) left out unless they copy,
   and reads of CPU scalars (torch's step counters) left out. The fused Ranger21 is counted on its
   accelerator path (one operation per reduction, forced here) and on its CPU path (per-tensor
   reductions, which cost microseconds on a CPU).
   VGGSpinalNet and EfficientNetV2-S at full size, every tensor trainable.
2. CPU wall time of one training step (batch 64, ten-crop: 640 crops) with Ranger21 on VGGSpinalNet at
   width 1/4, the package's step vs the fused one, alternating, median of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fer_tune.compat import ranger21_reference_step  # noqa: E402
from fer_tune.models import create_model  # noqa: E402
from fer_tune.training.config import TrainConfig  # noqa: E402
from fer_tune.training.engine import Trainer  # noqa: E402

# views and other metadata-only operations launch no kernel
METADATA_OPS = {
    "aten::view",
    "aten::reshape",
    "aten::permute",
    "aten::as_strided",
    "aten::split",
    "aten::split_with_sizes",
    "aten::alias",
    "aten::detach",
    "aten::t",
    "aten::expand",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::select",
    "aten::slice",
    "aten::narrow",
    "aten::_unsafe_view",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::result_type",
    "aten::lift_fresh",
    "aten::_reshape_alias",
    "aten::flatten",
    "aten::view_as",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::is_nonzero",
    "aten::size",
    "aten::stride",
}
COPIES = {"aten::clone", "aten::copy_", "aten::contiguous", "aten::_to_copy"}
HOST_READS = {"aten::item", "aten::_local_scalar_dense"}  # of CPU tensors (torch's own step counters): no launch


def _quiet(cls, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(*args, **kwargs)


def _descendants(event) -> list:
    out = []
    for child in event.cpu_children:
        out += [child, *_descendants(child)]
    return out


def count_step_ops(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Top-level aten operations of one ``optimizer.step()`` (after a first step that builds the state)."""
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimizer.step()
    count = 0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is not None:
            continue  # inside another aten operation
        if event.name in HOST_READS:
            continue
        if event.name not in METADATA_OPS or any(d.name in COPIES for d in _descendants(event)):
            count += 1
    return count


class ReferenceRanger21:
    """A factory: the ranger21 package's class stepping with its own step (issue 53 fixed)."""

    def __new__(cls, params, **options):
        from ranger21 import Ranger21

        class Reference(Ranger21):
            def step(self, closure=None):
                with contextlib.redirect_stdout(io.StringIO()):
                    return ranger21_reference_step()(self, closure)

        return _quiet(Reference, params, **options)


RANGER21 = dict(lr=1e-3, weight_decay=1e-4, num_epochs=10, num_batches_per_epoch=100, logging_active=False)


def optimizers():
    """(name, factory) of every optimizer counted: torch's, the packages', fer-tune's fused ones."""
    from pytorch_ranger import Ranger

    from fer_tune.training.fused_optim import FusedRanger, FusedRanger21

    return [
        (
            "SGD-Nesterov (torch, foreach)",
            lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, foreach=True),
        ),
        ("Adam (torch, foreach)", lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True)),
        ("Ranger (pytorch-ranger)", lambda ps: Ranger(ps, lr=1e-3, weight_decay=1e-4)),
        ("Ranger (fused)", lambda ps: FusedRanger(ps, lr=1e-3, weight_decay=1e-4)),
        ("Ranger21 (ranger21, issue 53 fixed)", lambda ps: ReferenceRanger21(ps, **RANGER21)),
        ("Ranger21 (fused, accelerator path)", lambda ps: _quiet(FusedRanger21, ps, **RANGER21, one_launch=True)),
        ("Ranger21 (fused, CPU path)", lambda ps: _quiet(FusedRanger21, ps, **RANGER21, one_launch=False)),
    ]


def ops_table() -> list[str]:
    models = {"vgg_spinal": create_model("vgg_spinal"), "effnetv2s": create_model("effnetv2s")}
    lines = [
        "| optimizer | "
        + " | ".join(f"{name} ({sum(1 for _ in m.parameters())} tensors)" for name, m in models.items())
        + " |",
        "|---|---|---|",
    ]
    import warnings

    for name, factory in optimizers():
        counts = []
        for model in models.values():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                counts.append(count_step_ops(model, factory(list(model.parameters()))))
        lines.append(f"| {name} | " + " | ".join(f"{c:,}" for c in counts) + " |")
    return lines


def step_times(rounds: int, steps: int) -> list[str]:
    """Median seconds per training step, Ranger21 on VGGSpinalNet width 1/4: package step vs fused."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64 * steps, 48, 48), dtype=np.uint8), rng.integers(0, 7, 64 * steps)
    config = TrainConfig(
        model="vgg_spinal", width=0.25, batch_size=64, epochs=10, optimizer="ranger21", scheduler="none", lr=1e-3
    )
    trainers = {
        "package step": Trainer(config, (images, labels), (images[:64], labels[:64])),
        "fused step": Trainer(config, (images, labels), (images[:64], labels[:64])),
    }
    trainers["package step"].optimizer = ReferenceRanger21(
        [p for p in trainers["package step"].model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
        num_epochs=config.epochs,
        num_batches_per_epoch=steps,
        normloss_factor=config.ranger21_norm_loss_factor,
        logging_active=False,
    )
    times: dict[str, list[float]] = {name: [] for name in trainers}
    step_s: dict[str, list[float]] = {name: [] for name in trainers}
    for name, trainer in trainers.items():
        trainer.optimizer.step = _timed(trainer.optimizer.step, step_s[name])
        trainer.train_one_epoch(max_batches=1)  # warm-up
    for r in range(rounds):
        for name in list(trainers) if r % 2 == 0 else list(trainers)[::-1]:  # alternating order: no position bias
            started = time.perf_counter()
            trainers[name].train_one_epoch(max_batches=steps)
            times[name].append((time.perf_counter() - started) / steps)
    med = {name: (statistics.median(times[name]), statistics.median(step_s[name])) for name in trainers}
    (package, package_opt), (fused, fused_opt) = med["package step"], med["fused step"]
    return [
        "| optimizer | training step (s, median) | of which optimizer.step (s, median) |",
        "|---|---|---|",
        f"| ranger21 package step | {package:.4f} | {package_opt:.4f} |",
        f"| fer-tune fused step | {fused:.4f} | {fused_opt:.4f} |",
        "",
        f"optimizer step: fused {package_opt / fused_opt:.2f}x faster; training step: fused {package / fused:.2f}x "
        f"faster (forward and backward dominate, and this VM's speed drifts); {rounds} rounds of {steps} steps, "
        f"alternating order, torch {torch.__version__}, {torch.get_num_threads()} threads",
    ]


def _timed(step, into: list[float]):
    def timed(closure=None):
        started = time.perf_counter()
        out = step(closure)
        into.append(time.perf_counter() - started)
        return out

    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print("## Operations per optimizer step\n")
    print("\n".join(ops_table()))
    print("\n## Training step, Ranger21, VGGSpinalNet width 1/4, CPU\n")
    print("\n".join(step_times(args.rounds, args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
