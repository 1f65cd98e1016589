"""Channels-last vs the default memory layout for one training step, side by side in one run.

    python bench/bench_channels_last.py [--device cpu|cuda]

Each row: a model at a width and batch of 40x40 grayscale crops (the ten-crop recipe's input), one
SGD step (forward, cross-entropy, backward, update), the mean of ``--steps`` steps after a warm-up
step, for both layouts; the ratio is default / channels-last (above 1: channels-last is faster).
Why it matters: :class:`fer_tune.training.engine.Trainer` runs convolutional models channels-last on every
device.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fer_tune.models import create_model

CASES = [
    ("vgg", 0.0625, 16),  # the real-data test's batch
    ("vgg", 0.0625, 64),  # the suite's and the smoke preset's
    ("vgg", 0.0625, 320),
    ("vgg", 0.125, 320),
    ("vgg", 0.25, 320),
    ("vgg", 1.0, 160),
    ("vgg_spinal", 0.125, 320),
    ("effnetv2s", 1.0, 32),
]


def step_seconds(model: str, width: float, batch: int, channels_last: bool, device: str, steps: int) -> float:
    """Mean seconds of one training step."""
    torch.manual_seed(0)
    options = {"width": width} if model.startswith("vgg") else {}
    net = create_model(model, **options).to(device)
    x = torch.rand(batch, 1, 40, 40, device=device)
    y = torch.randint(0, 7, (batch,), device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def step() -> None:
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(
        f"device {args.device} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}\n"
    )
    print("| model | width | batch | default s/step | channels-last s/step | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, width, batch in CASES:
        default = step_seconds(model, width, batch, False, args.device, args.steps)
        last = step_seconds(model, width, batch, True, args.device, args.steps)
        print(f"| {model} | {width:g} | {batch} | {default:.3f} | {last:.3f} | {default / last:.2f}x |")


if __name__ == "__main__":
    main()
